"""Samplers as pure functions of (model, x, times, cond): DDIM (deterministic) and ancestral.

The model gives `encode_condition(cond, drop)` (work that depends on the condition alone, done
once per call) and `denoise(x_t, t, cache)` (the raw prediction for its target). Guidance mixes
the conditional and null-condition predictions: pred = uncond + g * (cond - uncond). The null condition is
what the model's condition embedder uses where `drop` is True (see denoiser.py).
"""

from __future__ import annotations

import itertools

import torch

from lorasynth.models.defaults import PRIOR_GUIDANCE, PRIOR_STEPS
from lorasynth.models.diffusion import T_MAX, T_MIN, alpha_sigma, append_dims, to_x0_eps


def time_grid(steps: int) -> torch.Tensor:
    """steps + 1 decreasing times from T_MAX to 0 (the last step lands on clean data)."""
    grid = torch.linspace(T_MAX, T_MIN, steps)
    return torch.cat([grid, torch.zeros(1)])


def encode_guided_condition(model, cond: torch.Tensor, guidance: float):
    """The model's condition cache; with guidance, the batch is [conditional; null]."""
    if guidance == 1.0:
        return model.encode_condition(cond)
    drop = torch.cat(
        [torch.zeros(len(cond), dtype=torch.bool), torch.ones(len(cond), dtype=torch.bool)]
    )
    return model.encode_condition(torch.cat([cond, cond]), drop=drop)


def guided_prediction(
    model, x: torch.Tensor, t: torch.Tensor, cache, guidance: float
) -> torch.Tensor:
    if guidance == 1.0:
        return model.denoise(x, t, cache)
    conditional, unconditional = model.denoise(torch.cat([x, x]), torch.cat([t, t]), cache).chunk(2)
    return unconditional + guidance * (conditional - unconditional)


@torch.no_grad()
def sample(
    model,
    cond: torch.Tensor,
    dim: int,
    target: str,
    steps: int = PRIOR_STEPS,
    guidance: float = PRIOR_GUIDANCE,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Draw one vector per condition row. eta = 0 is DDIM; eta = 1 is ancestral (DDPM-like).
    `temperature` scales the starting noise: below 1, DDIM lands nearer the condition's most
    likely vectors and farther from its spread (0: one deterministic vector per condition)."""
    x = temperature * torch.randn(cond.shape[0], dim, generator=generator)
    cache = encode_guided_condition(model, cond, guidance)
    times = time_grid(steps)
    if hasattr(model, "at_times"):  # precompute what depends on time alone, for every step
        cache = model.at_times(cache, times[:-1])
    for t_now, t_next in itertools.pairwise(times):
        t = torch.full((x.shape[0],), float(t_now))
        pred = guided_prediction(model, x, t, cache, guidance)
        x0, eps = to_x0_eps(target, pred, x, t)
        if t_next == 0:
            x = x0
            break
        x = ddim_step(x0, eps, t_now, t_next, eta, generator)
    return x


def ddim_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    t_now: torch.Tensor,
    t_next: torch.Tensor,
    eta: float,
    generator,
) -> torch.Tensor:
    """x at t_next from the predicted (x0, eps) at t_now; eta scales the fresh noise."""
    a_now, s_now = alpha_sigma(torch.as_tensor(t_now))
    a_next, s_next = alpha_sigma(torch.as_tensor(t_next))
    # DDIM's noise level: eta = 1 matches the true posterior variance of the forward process.
    c = (
        eta
        * (s_next / s_now)
        * torch.sqrt((1 - (a_now * s_next / (a_next * s_now)) ** 2).clamp_min(0))
    )
    direction = torch.sqrt((s_next**2 - c**2).clamp_min(0))
    x = a_next * x0 + direction * eps
    if eta > 0:
        x = x + append_dims(c, x.ndim) * torch.randn(x.shape, generator=generator)
    return x
