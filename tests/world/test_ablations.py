"""Ablations change one thing of the default prior, whichever representation that uses."""

from __future__ import annotations

from lorasynth.train import PriorTrainConfig
from lorasynth.world.ablations import AblationConfig, ablations_for, default_values
from lorasynth.world.build import WORLD


def test_ablations_of_a_ridge_default_prior():
    prior = WORLD.synthesis.prior
    assert prior.representation == "ridge"
    found = {ab.name: ab for ab in ablations_for(AblationConfig(), 500, prior)}
    assert set(found) == {"vae", "pca", "raw", "latent32", "latent64", "bank250"}
    assert found["vae"].vae == {} and found["pca"].vae is None  # a VAE prior trains its VAE
    assert found["latent32"].prior == {"pca_dim": 32} and found["latent32"].vae is None
    assert default_values("ridge", 128, 500) == {
        "representation": "ridge",
        "latent_size": "128",
        "bank_size": "500",
    }


def test_ablations_of_a_vae_default_prior():
    found = {ab.name: ab for ab in ablations_for(AblationConfig(), 500, PriorTrainConfig())}
    assert set(found) == {"pca", "raw", "latent32", "latent64", "bank250"}
    assert found["latent32"].vae == {"latent_dim": 32} and found["latent32"].prior == {}
