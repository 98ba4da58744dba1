"""Images from a base pipeline with an optional LoRA: what a user of a LoRA file does with it."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lorasynth.errors import LorasynthError
from lorasynth.paths import mini_world_dir
from lorasynth.world.pipeline_io import load_pipeline


def load_base(base: str | os.PathLike[str] = "mini"):
    """'mini' (the shipped mini-world pipeline) or a local diffusers pipeline folder."""
    path = mini_world_dir() / "pipeline" if str(base) == "mini" else Path(base)
    return load_pipeline(path)


def generate_images(
    pipe,
    prompt: str,
    n: int,
    seed: int = 0,
    steps: int = 25,
    guidance: float = 3.0,
    lora: str | os.PathLike[str] | None = None,
) -> list:
    """n PIL images; image i uses a generator seeded with seed + i, so each is reproducible alone."""
    if lora is not None:
        from lorasynth.lora import read_lora

        path = Path(lora)
        read_lora(path)  # strict validation before diffusers (which drops unknown keys silently)
        pipe.load_lora_weights(str(path), adapter_name="subject")
    try:
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        images = []
        for i in range(n):
            gen = torch.Generator().manual_seed(seed + i)
            result = pipe(
                prompt,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=gen,
                height=size,
                width=size,
            )
            images.extend(result.images)
        return images
    except (ValueError, RuntimeError) as exc:
        raise LorasynthError(f"generation failed: {exc}") from None
    finally:
        if lora is not None:
            pipe.unload_lora_weights()
