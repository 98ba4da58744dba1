"""Images from a base pipeline with an optional LoRA: what a user of a LoRA file does with it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lorasynth.errors import LorasynthError
from lorasynth.paths import mini_world_dir
from lorasynth.world.pipeline_io import load_pipeline, pipeline_unet_config

if TYPE_CHECKING:
    from lorasynth.lora import LoraLayout

Base = str | os.PathLike[str]


def resolve_base(base: Base = "mini") -> Path:
    """'mini' -> the shipped mini-world pipeline folder; anything else is a path."""
    return mini_world_dir() / "pipeline" if str(base) == "mini" else Path(base)


def load_base(base: Base = "mini", config: Base | None = None):
    """'mini' (the shipped mini-world pipeline), a local diffusers pipeline folder, or a
    single-file SD1.5 checkpoint (.safetensors, original/kohya key layout; `config`: a diffusers
    config folder for other single-file models)."""
    return load_pipeline(resolve_base(base), config)


def base_layout(
    base: Base = "mini", preset: str = "w2w", rank: int = 1, config: Base | None = None
) -> LoraLayout:
    """The LoRA layout of the base's UNet, from its config alone (no weights are loaded)."""
    from lorasynth.lora import LoraLayout

    return LoraLayout.from_unet_config(
        pipeline_unet_config(resolve_base(base), config), preset, rank
    )


def check_fits_base(layout: LoraLayout, base: Base = "mini", config: Base | None = None) -> None:
    """Raise unless every module of `layout` is a layer of the base UNet with the same shape."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from lorasynth.lora.layout import layer_row

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(pipeline_unet_config(resolve_base(base), config))
    modules = dict(unet.named_modules())
    for row in layout.rows:
        module = modules.get(row.module)
        found = (
            layer_row(row.module, module, row.rank)
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d)
            else None
        )
        if found != row:
            where = (
                "is missing" if found is None else f"is {found.in_features} -> {found.out_features}"
            )
            raise LorasynthError(
                f"{layout.describe()} does not fit base {base}: {row.module} {where} there, "
                f"{row.in_features} -> {row.out_features} in the layout; use the bank's base model"
            )


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
