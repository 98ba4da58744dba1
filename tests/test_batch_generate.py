from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lorasynth.batch_generate import generate_with_loras
from lorasynth.lora import LoraLayout, write_lora
from tests.conftest import random_lora


@pytest.mark.parametrize("preset", ["attn", "attn-ff-conv"])
def test_batched_generation_matches_diffusers_one_by_one(tiny_pipeline, tmp_path, preset):
    from diffusers import DDIMScheduler

    tiny_pipeline.scheduler = DDIMScheduler.from_config(tiny_pipeline.scheduler.config)
    layout = LoraLayout.from_unet(tiny_pipeline.unet, preset, 2)
    loras = [random_lora(layout, seed=s, alpha=0.2) for s in (1, 2)]
    prompts = ["a photo of sks person", "a photo of sks person, red background", "a photo"]
    images = generate_with_loras(
        tiny_pipeline, layout, [loras[0], None, loras[1]], prompts, [5, 6, 7], steps=3, guidance=2.0
    )
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8

    for i, lora in ((0, loras[0]), (1, None), (2, loras[1])):
        pipe = copy.deepcopy(tiny_pipeline)
        if lora is not None:
            pipe.load_lora_weights(str(write_lora(tmp_path / f"{i}.safetensors", lora)))
        latents = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(5 + i))[None]
        ref = pipe(
            prompts[i],
            num_inference_steps=3,
            guidance_scale=2.0,
            latents=latents,
            height=16,
            width=16,
            output_type="np",
        ).images[0]
        ref = (ref * 255).round().astype(np.uint8)
        assert np.abs(ref.astype(int) - images[i].astype(int)).max() <= 2, i
