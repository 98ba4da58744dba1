"""The mini-world pipeline: configs, sizes, and a real StableDiffusionPipeline round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from lorasynth.errors import LorasynthError
from lorasynth.world.pipeline_build import (
    TINY_CONFIG,
    PipelineConfig,
    build_pipeline,
    make_text_encoder,
    make_tokenizer,
    make_unet,
    make_vae,
    parameter_counts,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_config_round_trip():
    cfg = PipelineConfig()
    assert PipelineConfig.from_dict(cfg.to_dict()) == cfg
    assert PipelineConfig.from_dict(TINY_CONFIG.to_dict()) == TINY_CONFIG
    bad = cfg.to_dict()
    bad["unet"]["channels"] = 3
    with pytest.raises(LorasynthError, match="unknown fields"):
        PipelineConfig.from_dict(bad)


def test_default_sizes():
    """Golden parameter counts of the shipped architecture (change only on purpose)."""
    cfg = PipelineConfig()
    tokenizer = make_tokenizer(cfg.text)
    vae, unet = make_vae(cfg.vae), make_unet(cfg.unet, cfg.vae, cfg.text)
    text_encoder = make_text_encoder(cfg.text, tokenizer)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(vae), count(unet), count(text_encoder)) == (624_839, 1_833_028, 1_176_960)
    x = torch.zeros(2, 3, 32, 32)
    assert vae.encode(x).latent_dist.mean.shape == (2, 4, 16, 16)
    assert unet.config.sample_size == 16 and unet.config.cross_attention_dim == 128


def test_mismatched_attention_levels():
    cfg = PipelineConfig().unet.__class__(attention=(True, True))
    with pytest.raises(LorasynthError, match="one entry per level"):
        make_unet(cfg, PipelineConfig().vae, PipelineConfig().text)


def test_save_load_generate(tmp_path):
    pipe = build_pipeline(TINY_CONFIG, seed=0)
    assert parameter_counts(pipe)["unet"] > 0
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(tmp_path.rglob("*.bin"))
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "np"}
    prompt = "a photo of a person, blue background"
    a = pipe(prompt, generator=torch.Generator().manual_seed(0), **kwargs).images
    b = loaded(prompt, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert a.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert loaded.safety_checker is None
