"""The automatic quality gate every synthesized LoRA passes before a person sees it.

Checks, in order: all weights finite; the weight norm's z-score against the norms of the
bank's LoRAs (a LoRA far outside the bank's range is broken or adversarial); and, when a
preview generator is configured, the cosine similarity of the preview images' face
embeddings to the subject's embedding. A failed check rejects; otherwise the LoRA goes to
review (or is approved at once when the tenant's policy says `auto_approve`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from lorasynth.service.policy import TenantPolicy


@dataclass(frozen=True)
class NormStats:
    """Mean and spread of the L2 norms of the bank's canonical vectors."""

    mean: float
    std: float
    count: int

    @classmethod
    def of(cls, vectors: torch.Tensor | Iterable[torch.Tensor]) -> NormStats:
        """Of rows (N, D), or of batches of rows (a bank's iter_batches: memory stays flat)."""
        batches = [vectors] if isinstance(vectors, torch.Tensor) else vectors
        parts = [b.double().norm(dim=1) for b in batches]
        norms = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
        std = float(norms.std()) if len(norms) > 1 else 0.0
        return cls(float(norms.mean()), std, len(norms))


@dataclass(frozen=True)
class GateResult:
    decision: str  # "reject" | "review" | "approve"
    metrics: dict
    reasons: list[str]


def gate(
    vector: torch.Tensor,
    bank: NormStats,
    policy: TenantPolicy,
    id_similarity: float | None = None,
) -> GateResult:
    finite = bool(torch.isfinite(vector).all())
    norm = float(vector.double().norm()) if finite else math.nan
    # A bank with no spread gives no scale to judge by: only exact matches pass.
    spread = bank.std if bank.std > 0 else 1e-12
    norm_z = (norm - bank.mean) / spread if finite else math.nan
    metrics = {
        "finite": finite,
        "weight_norm": _round(norm),
        "norm_z": _round(norm_z),
        "bank_norm_mean": _round(bank.mean),
        "bank_norm_std": _round(bank.std),
        "max_norm_z": policy.max_norm_z,
        "id_similarity": None if id_similarity is None else _round(id_similarity),
        "min_id_similarity": policy.min_id_similarity if id_similarity is not None else None,
    }
    reasons = []
    if not finite:
        reasons.append("weights contain NaN or Inf")
    elif abs(norm_z) > policy.max_norm_z:
        reasons.append(
            f"weight norm {norm:.4g} is {norm_z:+.2f} standard deviations from the bank's "
            f"mean {bank.mean:.4g} (limit {policy.max_norm_z})"
        )
    if id_similarity is not None and id_similarity < policy.min_id_similarity:
        reasons.append(
            f"preview ID similarity {id_similarity:.3f} is below {policy.min_id_similarity}"
        )
    decision = "reject" if reasons else ("approve" if policy.auto_approve else "review")
    return GateResult(decision, metrics, reasons)


def _round(x: float) -> float | None:
    return None if not math.isfinite(x) else round(x, 6)
