"""The `optimize` baseline: fit a latent so the decoded LoRA explains the photo (no prior).

Latent optimisation as in weights2weights-style inversion: start from the nearest bank subject's
latent, then minimise the UNet's diffusion loss on the photo's VAE latents with the LoRA decoded
from the latent applied, by gradient descent through the LoRA decoder. Slow by design (a few
seconds): it is the baseline that the prior's milliseconds are compared with.
"""

from __future__ import annotations

import numpy as np
import torch

from lorasynth.domains import get_domain
from lorasynth.world.lora_trainer import batched_loras, encode_images, encode_prompts, set_subjects

SUBJECT_PROMPT = "a photo of sks person"  # the faces domain's; see lorasynth.domains


def unflatten_batch(vectors: torch.Tensor, layout) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Differentiable (down, up) factors per module from canonical vectors (B, D)."""
    factors = {}
    for j, row in enumerate(layout.rows):
        block = vectors[:, layout.offsets[j] : layout.offsets[j + 1]]
        n_a = row.rank * row.in_features
        down = block[:, :n_a].reshape(-1, row.rank, row.in_features)
        up = block[:, n_a:].reshape(-1, row.out_features, row.rank)
        factors[row.module] = (down, up)
    return factors


def optimize_latent(
    synth,
    pipe,
    images: np.ndarray,
    steps: int = 60,
    lr: float = 0.05,
    batch: int = 8,
    seed: int = 0,
    losses: list[float] | None = None,
) -> torch.Tensor:
    """Canonical vector fitted to photo(s) `images` (N, H, W, 3) uint8 through the prior's decoder."""
    from diffusers import DDPMScheduler

    prior = synth.prior
    rep = prior.representation
    gen = torch.Generator().manual_seed(seed)
    cond = synth.embed(list(images))
    start = synth.rows((cond @ synth.bank_embeddings.T).argmax()[None])
    x = (
        ((rep.encode(synth.normaliser.encode(start)) - prior.latent_mean) / prior.latent_std)
        .detach()
        .requires_grad_(True)
    )
    photo_latents = encode_images(pipe.vae, images, gen)
    domain = getattr(synth, "domain", "faces")
    text = encode_prompts(pipe, [get_domain(domain).subject_prompt])
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    optimizer = torch.optim.Adam([x], lr=lr)
    unet = pipe.unet.requires_grad_(False)
    decoder_params = [p for p in getattr(rep, "vae", torch.nn.Module()).parameters()]
    for p in decoder_params:
        p.requires_grad_(False)
    with batched_loras(unet, synth.layout, 1, 1.0, gen) as wrapped:
        set_subjects(wrapped, torch.zeros(batch, dtype=torch.long))
        for _ in range(steps):
            vector = synth.normaliser.decode(_decode(rep, x * prior.latent_std + prior.latent_mean))
            for name, factors in unflatten_batch(vector, synth.layout).items():
                wrapped[name].external = factors
            pick = torch.randint(len(photo_latents), (batch,), generator=gen)
            x0 = photo_latents[pick]
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(scheduler.config.num_train_timesteps, (batch,), generator=gen)
            target = (
                noise
                if scheduler.config.prediction_type == "epsilon"
                else scheduler.get_velocity(x0, noise, t)
            )
            pred = unet(
                scheduler.add_noise(x0, noise, t),
                t,
                encoder_hidden_states=text.expand(batch, -1, -1),
            ).sample
            loss = torch.nn.functional.mse_loss(pred, target)
            if losses is not None:
                losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return synth.normaliser.decode(_decode(rep, x * prior.latent_std + prior.latent_mean))[0]


def _decode(rep, x: torch.Tensor) -> torch.Tensor:
    # Representation.decode runs under no_grad for speed; optimisation needs the graph.
    if hasattr(rep, "vae"):
        return rep.vae.decode(x)
    return rep.decode(x)
