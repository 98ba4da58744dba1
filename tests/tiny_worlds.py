"""Test helper: a complete products mini-world on tiny configs (every `world build` stage, ~40 s).

Shared by the build tests (tests/world/test_build_domains.py) and the tests that use a built
domain (evaluate, demo, embed) through the `tiny_products_world` fixture in tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lorasynth.faces.mini import EmbedderConfig
from lorasynth.train import PriorTrainConfig, VAETrainConfig
from lorasynth.world import build as wb
from lorasynth.world import train_embedders as te
from lorasynth.world.ablations import AblationConfig
from lorasynth.world.bank_build import BankBuildConfig
from lorasynth.world.lora_trainer import LoraTrainConfig
from lorasynth.world.pipeline_build import TINY_CONFIG
from lorasynth.world.synthesis_build import SynthesisBuildConfig

TINY_PRODUCTS = wb.WorldConfig(
    domain="products",
    train_identities=4,
    train_shipped=3,  # the fourth stays in build/, as the faces world's last 1,000 do
    heldout_identities=3,
    heldout_shipped=2,  # the third stays in build/, as the faces world's last 200 do
    bank=BankBuildConfig(
        images_per_identity=2,
        chunk=4,
        dtype="float16",  # as a shipped bank: every later stage reads float16 rows
        lora=LoraTrainConfig(
            preset="w2w",
            rank=1,
            steps=2,
            samples_per_subject=1,
            subject_prompt="a photo of sks product",
        ),
    ),
    embedder_steps=2,
    embedder_eval_identities=100,
    regressor_identities=10,
    vae_steps=2,
    unet_steps=1,
    workers=1,
    pipeline=TINY_CONFIG,
    pipeline_eval_samples=4,
    synthesis=SynthesisBuildConfig(
        condition_photos=2,
        vae=VAETrainConfig(latent_dim=4, hidden=16, depth=1, steps=2, batch_size=4),
        prior=PriorTrainConfig(
            width=16, depth=1, adalora_rank=2, cond_embed_dim=8, steps=2, batch_size=4
        ),
        priors={"adalora-v": {}},
        calibration_subjects=2,
    ),
    # One of each kind: raw vectors, a 2-wide latent, the first 2 subjects, the x0 target.
    ablations=AblationConfig(
        representations=("raw",), latent_sizes=(2,), bank_sizes=(2, 5), targets=("x0",)
    ),
)


def use_world(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Point the shipped assets and the build scratch at ROOT/assets and ROOT/build."""
    monkeypatch.setenv("LORASYNTH_ASSETS", str(root / "assets"))
    monkeypatch.setenv("LORASYNTH_BUILD", str(root / "build"))


def tiny_style_embedders(monkeypatch: pytest.MonkeyPatch) -> None:
    """The products embedders at tiny sizes and 2 training steps."""
    for name, arch in (("mini-style", "resnet"), ("mini-style-eval", "plain")):
        monkeypatch.setitem(te.STYLE_PRESETS, name, EmbedderConfig(name, arch, (8, 16), (1, 1), 16))
        monkeypatch.setitem(
            te.TRAINING,
            name,
            te.TrainConfig(steps=2, batch_size=8, num_identities=4, warmup_steps=1),
        )


def build_tiny_products(root: Path) -> Path:
    """Every stage of TINY_PRODUCTS into ROOT/assets (env restored afterwards); returns ROOT."""
    with pytest.MonkeyPatch.context() as mp:
        use_world(mp, root)
        tiny_style_embedders(mp)
        wb.build(world=TINY_PRODUCTS, resume=False, progress=False)
    return root
