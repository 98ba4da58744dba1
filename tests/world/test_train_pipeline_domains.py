"""The mini-world pipeline on a second domain: product renders and captions, same training code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from lorasynth.checkpoint import load_training_state, save_training_state
from lorasynth.errors import LorasynthError
from lorasynth.world import train_pipeline as tp
from lorasynth.world.pipeline_build import TINY_CONFIG, make_vae
from lorasynth.world.prompt_fidelity import prompt_fidelity

VAE_CFG = tp.VaeTrainConfig(
    pipeline=TINY_CONFIG, batch_size=4, scale_samples=32, eval_samples=16, domain="products"
)
UNET_CFG = tp.UNetTrainConfig(
    pipeline=TINY_CONFIG, batch_size=4, warmup=2, sample_every=0, domain="products"
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_product_batches_name_products_and_their_backgrounds():
    images, captions, backgrounds = tp.training_batch(0, 3, 40, 50, domain="products")
    faces, face_captions, _ = tp.training_batch(0, 3, 40, 50)
    assert images.shape == (40, 32, 32, 3) and not np.array_equal(images, faces)
    assert all(c.startswith("a photo of a product") for c in captions)
    assert all(c.startswith("a photo of a person") for c in face_captions)
    assert all(
        c.endswith(f"{b} background") or f"{b} background" in c
        for c, b in zip(captions, backgrounds, strict=True)
    )
    assert prompt_fidelity(images, backgrounds) == 1.0
    again = tp.training_batch(0, 3, 40, 50, domain="products")
    assert np.array_equal(again[0], images) and again[1] == captions


def test_grid_prompts_per_domain():
    faces = tp.grid_prompts()
    assert faces[:2] == [
        "a photo of a person, red background",
        "a photo of a person, smiling, red background",
    ]
    products = tp.grid_prompts("products")
    assert len(products) == len(faces) == 80
    assert "a photo of a product, on a table, red background" in products


def test_products_vae_unet_and_evaluation_run(tmp_path):
    record = tp.train_vae(tmp_path, 2, VAE_CFG, progress=False)
    assert record["config"]["domain"] == "products"
    tp.train_unet(tmp_path, 1, UNET_CFG, progress=False)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    metrics = tp.evaluate_pipeline(pipe, num_samples=8, num_inference_steps=1, domain="products")
    assert metrics["classifier_accuracy_on_renders"] == 1.0


def test_a_run_from_before_domains_resumes_as_faces(tmp_path):
    cfg = tp.VaeTrainConfig(pipeline=TINY_CONFIG, batch_size=2, scale_samples=8, eval_samples=8)
    tp.train_vae(tmp_path, 1, cfg, progress=False)
    state_path = tmp_path / "vae-state.safetensors"
    vae = make_vae(TINY_CONFIG.vae)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    state = load_training_state(state_path, modules={"vae": vae}, optimizers={"adamw": opt})
    old_config = {k: v for k, v in state["config"].items() if k != "domain"}
    save_training_state(
        state_path,
        step=state["step"],
        modules={"vae": vae},
        optimizers={"adamw": opt},
        config=old_config,
        extra=state["extra"],
    )
    assert tp.train_vae(tmp_path, 2, cfg, resume=True, progress=False)["steps"] == 2
    products = tp.VaeTrainConfig(**{**cfg.__dict__, "domain": "products"})
    with pytest.raises(LorasynthError, match=r"differs in \['domain'\]"):
        tp.train_vae(tmp_path, 3, products, resume=True, progress=False)
