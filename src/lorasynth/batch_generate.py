"""Generate images for many LoRAs in one UNet batch (each sample with its own LoRA).

Evaluation needs images from hundreds of LoRAs; loading them one by one into diffusers costs a
pipeline call each. Here the LoRAs ride in one batch through per-sample LoRA layers (the same
ones the bank trainer uses), with classifier-free guidance; tests check that a sample equals what
`load_lora_weights` + the diffusers pipeline produce for that LoRA alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lorasynth.lora import LoraFile, LoraLayout, LoraModule
from lorasynth.world.lora_trainer import encode_prompts, loaded_loras, set_subjects


def _zero_lora(layout: LoraLayout) -> LoraFile:
    return LoraFile(
        {
            r.module: LoraModule(
                torch.zeros(r.rank, r.in_features),
                torch.zeros(r.out_features, r.rank),
                float(r.rank),
                r.kernel,
            )
            for r in layout.rows
        }
    )


@torch.no_grad()
def generate_with_loras(
    pipe,
    layout: LoraLayout,
    loras: Sequence[LoraFile | None],
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int = 25,
    guidance: float = 3.0,
    batch_size: int = 64,
) -> np.ndarray:
    """Image i uses loras[i] (None: the base model), prompts[i] and seeds[i] -> (N, H, W, 3) uint8."""
    from diffusers import DDIMScheduler

    if not len(loras) == len(prompts) == len(seeds):
        raise ValueError("need one LoRA (or None), prompt and seed per image")
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    unique = [lora or _zero_lora(layout) for lora in loras]
    size = pipe.unet.config.sample_size
    channels = pipe.unet.config.in_channels
    out = []
    for lo in range(0, len(unique), batch_size):
        part = slice(lo, lo + batch_size)
        batch_loras = unique[part]
        n = len(batch_loras)
        text = encode_prompts(pipe, list(prompts[part]) + [""] * n)
        latents = (
            torch.stack(
                [
                    torch.randn(
                        channels, size, size, generator=torch.Generator().manual_seed(int(s))
                    )
                    for s in seeds[part]
                ]
            ).to(pipe.unet.device)
            * scheduler.init_noise_sigma
        )
        scheduler.set_timesteps(steps)
        with loaded_loras(pipe.unet, batch_loras, layout) as wrapped:
            # Guidance batch: [conditional; unconditional], each sample keeping its own LoRA.
            set_subjects(wrapped, torch.arange(n).repeat(2))
            for t in scheduler.timesteps:
                model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
                noise = pipe.unet(model_in, t, encoder_hidden_states=text).sample
                cond, uncond = noise.chunk(2)
                latents = scheduler.step(
                    uncond + guidance * (cond - uncond), t, latents
                ).prev_sample
        images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        out.append(
            ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        )
    return np.concatenate(out)
