"""Metric definitions (DESIGN.md, "Metrics"): they are part of the contract, so they live alone."""

from __future__ import annotations

import math

import numpy as np
import torch


def mean_ci95(values) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% interval (0 for n < 2)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size < 2:
        return float(x.mean()), 0.0
    return float(x.mean()), float(1.96 * x.std(ddof=1) / math.sqrt(x.size))


def id_similarity(generated: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Cosine between each generated image's embedding (N, E) and its subject's reference (N, E)."""
    return torch.nn.functional.cosine_similarity(generated, references, dim=-1)


def normalised_fidelity(sim_method: float, sim_base: float, sim_trained: float) -> float:
    """(sim_method - sim_base) / (sim_trained - sim_base): 0 = no LoRA, 1 = a trained LoRA."""
    gap = sim_trained - sim_base
    return float("nan") if abs(gap) < 1e-12 else (sim_method - sim_base) / gap


def top1_identification(
    generated: torch.Tensor, subject: torch.Tensor, gallery: torch.Tensor, size: int | None = None
) -> torch.Tensor:
    """1.0 where a generated embedding's nearest gallery reference is its own subject's row.

    `size`: identification among that many subjects however large the gallery: each subject
    competes with the first size-1 other rows, so "top-1 among 100" means the same at any N."""
    sims = generated @ gallery.T
    if size is not None and size < gallery.shape[0]:
        cols = torch.arange(gallery.shape[0]).unsqueeze(0)
        own = cols == subject.unsqueeze(1)
        rank_among_others = cols - (cols > subject.unsqueeze(1)).long()
        sims = sims.masked_fill(~(own | (rank_among_others < size - 1)), float("-inf"))
    return (sims.argmax(dim=1) == subject).float()


def reference_embedding(embeddings: torch.Tensor) -> torch.Tensor:
    """A subject's reference: the L2-normalised mean of its reference photos' embeddings."""
    return torch.nn.functional.normalize(embeddings.mean(dim=-2), dim=-1)
