"""Ablations change one thing of the default prior, whichever representation that uses."""

from __future__ import annotations

from dataclasses import replace

from lorasynth.train import PriorTrainConfig
from lorasynth.world.ablations import AblationConfig, ablations_for, default_values
from lorasynth.world.build import WORLD


def test_ablations_of_a_ridge_default_prior():
    prior = WORLD.synthesis.prior
    assert prior.representation == "ridge"
    found = {ab.name: ab for ab in ablations_for(AblationConfig(), 500, prior)}
    assert set(found) == {
        "vae",
        "pca",
        "raw",
        "latent32",
        "latent64",
        "latent256",
        "bank250",
        "eps",
        "x0",
        "lincomb",
    }
    assert found["vae"].vae == {} and found["pca"].vae is None  # a VAE prior trains its VAE
    assert found["latent32"].prior == {"pca_dim": 32} and found["latent32"].vae is None
    # the targets keep everything else (ridge, mixup...): methods diffusion-eps / diffusion-x0
    assert found["eps"].prior == {"target": "eps"} and found["eps"].method == "diffusion-eps"
    assert (found["x0"].group, found["x0"].value) == ("target", "x0")
    assert default_values("ridge", 128, 500) == {
        "representation": "ridge",
        "latent_size": "128",
        "bank_size": "500",
        "target": "v",
        "anchor": "none",
    }
    # bank sizes below the bank's are built: at 1,500 subjects, 250 / 500 / 1,000
    grown = {ab.name for ab in ablations_for(AblationConfig(), 1500, prior)}
    assert {"bank250", "bank500", "bank1000"} <= grown


def test_ablations_of_a_vae_default_prior():
    found = {ab.name: ab for ab in ablations_for(AblationConfig(), 500, PriorTrainConfig())}
    # no anchor ablation: an anchor needs a linear representation
    assert set(found) == {"pca", "raw", "latent32", "latent64", "latent256", "bank250", "eps", "x0"}
    # an eps default prior's target ablations are the other two
    eps = replace(PriorTrainConfig(), target="eps")
    assert {ab.name for ab in ablations_for(AblationConfig(), 500, eps)} >= {"v", "x0"}
    assert found["latent32"].vae == {"latent_dim": 32} and found["latent32"].prior == {}


def test_an_ablation_built_from_another_default_is_named_with_the_difference(tmp_path, monkeypatch):
    import json
    from dataclasses import asdict, replace

    from lorasynth.world import ablations as ab

    monkeypatch.setattr(ab, "ablations_root", lambda domain: tmp_path)
    default = replace(WORLD.synthesis.prior, mixup=0.5)
    for name, base in (("pca", replace(default, mixup=0.0)), ("raw", default)):
        (tmp_path / name).mkdir()
        overrides = {"representation": name}
        record = {
            "name": name,
            "prior": overrides,
            "prior_config": asdict(replace(base, **overrides)),
        }
        (tmp_path / name / "ablation.json").write_text(json.dumps(record))
    # pca's own change (representation) is not a difference; its older base (mixup) is
    assert ab.stale_ablations("faces", default) == {"diffusion-pca": "mixup 0.0, now 0.5"}
    # a record written before a field existed reads it as the field's default
    legacy = json.loads((tmp_path / "raw" / "ablation.json").read_text())
    del legacy["prior_config"]["mixup"]
    (tmp_path / "raw" / "ablation.json").write_text(json.dumps(legacy))
    assert set(ab.stale_ablations("faces", default)) == {"diffusion-pca", "diffusion-raw"}


def test_an_anchored_default_is_ablated_through_its_plain_prior(tmp_path, monkeypatch):
    """With an anchored default, the anchor group holds the plain prior and every other
    ablation changes the plain prior (the paper's), so plain-built ablations are not stale."""
    import json
    from dataclasses import asdict

    from lorasynth.world import ablations as ab

    anchored = replace(WORLD.synthesis.prior, anchor="lincomb")
    found = {a.name: a for a in ablations_for(AblationConfig(), 1500, anchored)}
    assert "lincomb" not in found
    assert (found["plain"].group, found["plain"].value) == ("anchor", "none")
    assert found["plain"].prior == {"anchor": ""} and found["plain"].method == "diffusion-plain"
    assert ab.plain(anchored) == replace(anchored, anchor="")
    monkeypatch.setattr(ab, "ablations_root", lambda domain: tmp_path)
    (tmp_path / "x0").mkdir()
    record = {
        "name": "x0",
        "prior": {"target": "x0"},
        "prior_config": asdict(replace(ab.plain(anchored), target="x0")),
    }
    (tmp_path / "x0" / "ablation.json").write_text(json.dumps(record))
    assert ab.stale_ablations("faces", anchored) == {}
    assert default_values("ridge", 128, 1500, "v", "lincomb")["anchor"] == "lincomb"
