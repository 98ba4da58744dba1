"""lincomb: a subject's LoRA as the bank's mean plus a weighted sum of its nearest subjects'
deviations (weights2weights-style linear method), weights fitted in embedding space.

The `lincomb` baseline of synthesis uses it, and so does a prior trained around it
(PriorTrainConfig.anchor = "lincomb"): there, each bank subject's combination is made without
the subject itself (`exclude`), as it would be for an unseen one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

ANCHOR_KEY = "anchor_lincomb"  # a prior file's tensor: the LincombConfig it was trained around
# ... and the per-coordinate scale of the anchor's latent it adds its sample to
ANCHOR_SCALE_KEY = "anchor_scale"
CHUNK = 16  # conditions per solve: (CHUNK, k, D) float64 neighbour blocks stay small


@dataclass(frozen=True)
class LincombConfig:
    k: int = 32  # nearest bank subjects combined
    ridge: float = 0.05  # on the Gram matrix of the neighbours' centred embeddings
    softmax_temperature: float = 0.05  # over cosine similarities: the combination's norm

    def tensor(self) -> torch.Tensor:
        """The config as stored with a prior trained around it (see from_tensor)."""
        return torch.tensor([self.k, self.ridge, self.softmax_temperature], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> LincombConfig:
        k, ridge, softmax_temperature = values.tolist()
        # stored weights may be float32: read back the decimal values that were written
        return cls(int(k), float(f"{ridge:.6g}"), float(f"{softmax_temperature:.6g}"))


def lincomb_vectors(
    cond: torch.Tensor,
    bank_embeddings: torch.Tensor,
    aligned_rows: Callable[[torch.Tensor], torch.Tensor],
    mean_vector: torch.Tensor,
    config: LincombConfig = LincombConfig(),
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Vectors (B, D) for condition embeddings (B, E).

    `aligned_rows(indices (n,))` gives those bank rows' sign-aligned vectors (n, D);
    `mean_vector` (D,) is the normaliser's mean (of aligned vectors); `exclude` (B,) names a
    bank row each condition may not use (its own subject), or -1 for none.
    """
    out = []
    for start in range(0, len(cond), CHUNK):
        rows = slice(start, start + CHUNK)
        out.append(
            _chunk(
                cond[rows],
                bank_embeddings,
                aligned_rows,
                mean_vector,
                config,
                None if exclude is None else exclude[rows],
            )
        )
    return torch.cat(out) if out else torch.empty(0, len(mean_vector))


def _chunk(cond, bank_embeddings, aligned_rows, mean_vector, config, exclude) -> torch.Tensor:
    k = min(config.k, len(bank_embeddings) - (exclude is not None))
    similarity = cond.float() @ bank_embeddings.T.float()  # (B, N)
    if exclude is not None:
        own = exclude >= 0
        similarity[own.nonzero().squeeze(1), exclude[own]] = -torch.inf
    nearest = similarity.topk(k, dim=1)
    top = nearest.indices  # (B, k)
    centre = bank_embeddings.mean(0).double()
    deviations = bank_embeddings[top].double() - centre  # (B, k, E)
    # Ridge: find w with centre + deviations^T w ~ cond, small |w|.
    gram = deviations @ deviations.transpose(1, 2) + config.ridge * torch.eye(
        k, dtype=torch.float64
    )
    rhs = deviations @ (cond.double() - centre).unsqueeze(2)
    weights = torch.linalg.solve(gram, rhs).squeeze(2)  # (B, k)
    unique, inverse = top.unique(return_inverse=True)
    neighbours = aligned_rows(unique).double()[inverse] - mean_vector.double()  # (B, k, D)
    deviation = torch.einsum("bk,bkd->bd", weights, neighbours)
    # A combination of many high-dimensional LoRAs shrinks towards the mean (measured on the
    # mini-world: half the norm, ID similarity 0.10 vs 0.19 for nearest); give it the
    # similarity-weighted norm of its neighbours' deviations (0.19 then).
    closeness = torch.softmax(nearest.values.double() / config.softmax_temperature, dim=1)
    target_norm = (closeness * neighbours.norm(dim=2)).sum(1, keepdim=True)
    deviation = deviation * (target_norm / deviation.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return (mean_vector.double() + deviation).float()
