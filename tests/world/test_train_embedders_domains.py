"""Embedder training for a second domain: the same loop on products, the domain in the files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lorasynth.checkpoint import save_training_state
from lorasynth.domains import PRODUCTS
from lorasynth.errors import LorasynthError
from lorasynth.faces.mini import EmbedderConfig, load_embedder, load_regressor
from lorasynth.lora.safetensors_io import load_tensors
from lorasynth.world import train_embedders as te
from lorasynth.world.products import PRODUCT_ATTRIBUTE_NAMES
from lorasynth.world.train_embedders import TrainConfig, TrainingFaces, train_embedder

TINY_TRAIN = TrainConfig(steps=5, batch_size=8, num_identities=4, warmup_steps=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_training_batches_render_the_requested_domain():
    faces = TrainingFaces(3, seed=1, size=32)
    products = TrainingFaces(3, seed=1, size=32, domain="products")
    assert products.attrs[0] == PRODUCTS.identity_attributes(PRODUCTS.model_training_start)
    x_faces, y_faces = faces.batch(0, 4)
    x_products, y_products = products.batch(0, 4)
    assert torch.equal(y_faces, y_products)  # same labels stream, different subjects
    assert not torch.allclose(x_faces, x_products)
    with pytest.raises(LorasynthError, match="unknown domain"):
        TrainingFaces(3, seed=1, size=32, domain="cats")


def test_products_embedders_are_named_and_belong_to_products():
    assert {"mini-style", "mini-style-eval"} <= set(te.embedder_names())
    assert te.embedder_config("mini-style").arch != te.embedder_config("mini-style-eval").arch
    assert te.TRAINING["mini-style"].seed != te.TRAINING["mini-style-eval"].seed
    with pytest.raises(LorasynthError, match="unknown embedder 'mini-nope'"):
        te.embedder_config("mini-nope")


def test_build_products_judge_saves_the_domain_and_its_regressor(tmp_path, monkeypatch):
    tiny = EmbedderConfig("mini-style-eval", "plain", (8, 16), (1, 1), 16)
    monkeypatch.setitem(te.STYLE_PRESETS, "mini-style-eval", tiny)
    monkeypatch.setitem(te.TRAINING, "mini-style-eval", TINY_TRAIN)
    out = tmp_path / "products" / "embedders"
    metrics = te.build_embedder(
        "mini-style-eval",
        out,
        progress=False,
        state_dir=tmp_path / "state",
        eval_identities=100,
        regressor_identities=20,
    )
    assert 0.0 <= metrics["rank1"] <= 1.0 and "attribute_mae" in metrics
    path = out / "mini-style-eval.safetensors"
    _, meta = load_tensors(path)
    assert json.loads(meta["extra"])["domain"] == "products"
    model = load_embedder(path)
    assert model.embedder_id.startswith("mini-style-eval/")
    record = json.loads((out / "mini-style-eval.json").read_text())
    assert record["domain"] == "products"
    regressor = load_regressor(out / "attribute-regressor.safetensors")
    assert regressor.config.attribute_names == PRODUCT_ATTRIBUTE_NAMES
    assert set(record["attribute_regressor"]["per_attribute"]) == set(PRODUCT_ATTRIBUTE_NAMES)


def test_resume_refuses_a_state_of_another_domain_and_reads_old_states_as_faces(tmp_path):
    tiny = EmbedderConfig("tiny", "resnet", (8, 16), (1, 1), 16)
    state = tmp_path / "state.safetensors"
    train_embedder(tiny, TINY_TRAIN, state, progress=False, until=2, domain="products")
    with pytest.raises(LorasynthError, match="different configuration"):
        train_embedder(tiny, TINY_TRAIN, state, progress=False, domain="faces")
    # A state written before domains existed (no domain key) resumes as faces.
    model = te.MiniEmbedder(tiny)
    loss = te.ArcFaceLoss(16, TINY_TRAIN.num_identities, TINY_TRAIN.scale, TINY_TRAIN.margin)
    opt = te.make_optimizer(model, loss, TINY_TRAIN)
    old = tmp_path / "old.safetensors"
    config = {"model": tiny.to_dict(), "train": te.asdict(TINY_TRAIN)}
    save_training_state(
        old,
        step=4,
        modules={"model": model, "arcface": loss},
        optimizers={"opt": opt},
        config=config,
        extra={"seconds": 1.0, "losses": []},
    )
    _, log = train_embedder(tiny, TINY_TRAIN, old, progress=False)
    assert log["steps"] == 5 and np.isfinite(log["seconds"])
