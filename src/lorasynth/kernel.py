"""kernel: a subject's LoRA by kernel ridge regression from its embedding over the bank.

The `kernel` baseline of synthesis. Where `lincomb` solves for weights over a subject's 32
nearest bank LoRAs in embedding space, this weighs every bank subject (or the nearest
`neighbours` of a large bank) by a kernel on embedding similarity,
k(a, b) = exp((cos(a, b) - 1) / bandwidth), with weights (K + ridge I)^-1 k(e): a smooth,
nonlinear map from embedding to LoRA. Why it exists (session 10, 48 validation subjects): the
bank's other LoRAs hold a held-out subject's identity almost whole (their least-squares best
combination scores ID similarity 0.706 against the subject's own LoRA's 0.697), but lincomb's
32 neighbours span too little of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KernelConfig:
    # Chosen on 48 validation identities (session 10, 1,500 bank, each at its best strength):
    # bandwidth 0.03 / 0.1 / 0.2 / 0.4: ID sim 0.525 / 0.555 / 0.556 / 0.548 (ridge 0.1); at
    # bandwidth 0.1, ridge 0.01 / 0.1 / 1: 0.554 / 0.555 / 0.549.
    bandwidth: float = 0.2  # tau of exp((cos - 1) / tau): how fast similarity falls off
    ridge: float = 0.1  # on the kernel matrix
    # Up to this many subjects one inverse of the whole kernel matrix serves every query
    # (4,096: 2 s once, 134 MB); a larger bank answers each query from its nearest `neighbours`
    # subjects instead (one 1,024-subject solve per query, milliseconds).
    whole_bank_max: int = 4096
    neighbours: int = 1024


class KernelRegression:
    """Kernel ridge weights over a bank's subjects, from their (mean) embeddings (N, E)."""

    def __init__(self, bank_embeddings: torch.Tensor, config: KernelConfig = KernelConfig()):
        self.config = config
        self.embeddings = torch.nn.functional.normalize(bank_embeddings.double(), dim=1)
        # (K + ridge I)^-1 of a bank small enough, made here once: one matrix product a query
        # (a Cholesky solve with one right-hand side took 71 ms at 3,000 subjects, this 6.5 ms).
        self._inverse: torch.Tensor | None = None
        if len(self.embeddings) <= config.whole_bank_max:
            self._inverse = torch.cholesky_inverse(
                torch.linalg.cholesky(self._gram(self.embeddings))
            )

    def _kernel(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp((a @ b.T - 1) / self.config.bandwidth)

    def _gram(self, e: torch.Tensor) -> torch.Tensor:
        return self._kernel(e, e) + self.config.ridge * torch.eye(len(e), dtype=e.dtype)

    def weights(self, cond: torch.Tensor) -> torch.Tensor:
        """Weights (B, N) over the bank's subjects for condition embeddings (B, E)."""
        cond = torch.nn.functional.normalize(cond.double(), dim=1)
        k = self._kernel(cond, self.embeddings)  # (B, N)
        if self._inverse is not None:
            return k @ self._inverse  # symmetric
        out = torch.zeros_like(k)
        top = k.topk(min(self.config.neighbours, k.shape[1]), dim=1).indices
        for b in range(len(cond)):
            gram = self._gram(self.embeddings[top[b]])
            out[b, top[b]] = torch.linalg.solve(gram, k[b, top[b]])
        return out

    def vectors(
        self,
        cond: torch.Tensor,
        weighted_sum: Callable[[torch.Tensor], torch.Tensor],
        mean_vector: torch.Tensor,
    ) -> torch.Tensor:
        """Vectors (B, D): the bank's mean plus the weighted sum of its subjects' deviations.

        `weighted_sum(weights (B, N))` gives weights @ the bank's sign-aligned vectors (N, D)."""
        # The solve wants float64; the sum over the bank is float32, as the bank is.
        weights = self.weights(cond).float()
        mean = mean_vector.float()
        return mean + weighted_sum(weights) - weights.sum(1, keepdim=True) * mean
