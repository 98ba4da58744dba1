"""Continuous-time Gaussian diffusion over vectors: schedule, prediction targets, loss.

x_t = alpha(t) x0 + sigma(t) eps with the cosine schedule alpha = cos(pi t / 2),
sigma = sin(pi t / 2), t in [T_MIN, T_MAX]. The network predicts one of
    eps: the noise,  x0: the clean vector,  v = alpha eps - sigma x0;
`to_x0_eps` turns any of them into (x0, eps), which is all a sampler needs.
"""

from __future__ import annotations

import math

import torch

TARGETS = ("eps", "x0", "v")
# Keep alpha and sigma away from 0 so every target stays invertible; at T_MAX alpha = 0.031,
# so an eps-prediction's x0 estimate is amplified at most ~30x (SD's schedule ends at 0.068).
T_MIN, T_MAX = 1e-3, 0.98


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Trailing singleton dims so a per-sample scalar broadcasts over a batch of shape ndim."""
    return x.reshape(*x.shape, *([1] * (ndim - x.ndim)))


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    angle = t * (math.pi / 2)
    return torch.cos(angle), torch.sin(angle)


def check_target(target: str) -> str:
    if target not in TARGETS:
        from lorasynth.errors import LorasynthError

        raise LorasynthError(
            f"unknown prediction target {target!r}; choose one of {', '.join(TARGETS)}"
        )
    return target


def make_target(target: str, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    alpha, sigma = (append_dims(v, x0.ndim) for v in alpha_sigma(t))
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    return alpha * eps - sigma * x0


def to_x0_eps(
    target: str, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    alpha, sigma = (append_dims(v, x_t.ndim) for v in alpha_sigma(t))
    if target == "eps":
        return (x_t - sigma * pred) / alpha, pred
    if target == "x0":
        return pred, (x_t - alpha * pred) / sigma
    return alpha * x_t - sigma * pred, sigma * x_t + alpha * pred


def diffusion_loss(
    model,
    x0: torch.Tensor,
    cond: torch.Tensor,
    target: str,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    eps: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE between the model's prediction and the target at uniformly drawn times.

    `t` and `eps` may be given (e.g. drawn for a global batch and sliced per process).
    """
    if t is None:
        t = T_MIN + (T_MAX - T_MIN) * torch.rand(x0.shape[0], generator=generator)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator)
    alpha, sigma = (append_dims(v, x0.ndim) for v in alpha_sigma(t))
    x_t = alpha * x0 + sigma * eps
    pred = model(x_t, t, cond)
    return torch.nn.functional.mse_loss(pred, make_target(target, x0, eps, t))


def draw_times(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return T_MIN + (T_MAX - T_MIN) * torch.rand(n, generator=generator)
