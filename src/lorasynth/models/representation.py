"""What the prior diffuses over: VAE latents, PCA or ridge-subspace coefficients, or raw vectors.

- pca: the top-k principal directions of the bank (most variance);
- ridge: the k directions of LoRA space that the condition embedding predicts linearly (the
  principal directions of a ridge regression's fitted values). On the v1 faces bank most of a
  LoRA's variance is subject-specific detail that no other subject shares (all 499 principal
  directions of 500 LoRAs explain 10% of a held-out LoRA), so variance-ranked latents (PCA, the
  VAE) keep what does not generalise; the ridge directions keep what the face predicts.

All three map normalised canonical vectors z <-> prior space x; the prior additionally
standardises x per coordinate (its own stored mean/std), like SD's latent scaling factor.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lorasynth.errors import LorasynthError
from lorasynth.models.store import weights_hash
from lorasynth.models.vae import LoraVAE

REPRESENTATIONS = ("vae", "pca", "ridge", "raw")


class Representation:
    kind = "raw"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    @property
    def id(self) -> str:
        return "raw"

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    # Linear representations (raw, pca, ridge) map differences to differences, so a prior can
    # model a residual around another vector (PriorTrainConfig.anchor).
    linear = True

    def decode_difference(self, x: torch.Tensor) -> torch.Tensor:
        """decode(x) - decode(0): the vector difference a latent difference x stands for."""
        return x


class VaeRepresentation(Representation):
    kind = "vae"
    linear = False

    def __init__(self, vae: LoraVAE, digest: str) -> None:
        super().__init__(vae.config.latent_dim)
        self.vae = vae.eval()
        self.digest = digest

    @property
    def id(self) -> str:
        return f"vae:{self.digest}"

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(z)[0]

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(x)


class PcaRepresentation(Representation):
    kind = "pca"

    def __init__(self, mean: torch.Tensor, components: torch.Tensor) -> None:
        super().__init__(components.shape[0])
        self.mean = mean
        self.components = components  # (k, D), orthonormal rows

    @property
    def id(self) -> str:
        return f"{self.kind}:{weights_hash({'mean': self.mean, 'components': self.components})}"

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) @ self.components.T

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.components + self.mean

    def decode_difference(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.components

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"pca_mean": self.mean, "pca_components": self.components}

    @classmethod
    def fit(cls, z: torch.Tensor, k: int, seed: int = 0) -> PcaRepresentation:
        """Top-k principal directions of the rows of z (randomised SVD, seeded)."""
        if k > min(z.shape):
            raise LorasynthError(f"PCA dimension {k} exceeds min(rows, dim) = {min(z.shape)}")
        mean = z.mean(0)
        torch.manual_seed(
            seed
        )  # pca_lowrank takes no generator; fix its sketch for reproducibility
        _, _, v = torch.pca_lowrank(z - mean, q=min(k + 10, min(z.shape)), center=False, niter=4)
        return cls(mean, v[:, :k].T.contiguous())


def ridge_regression(
    cond: torch.Tensor, targets: Iterable[torch.Tensor], penalty: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centre (E,), weights (E, D), mean (D,)), float64, of the ridge regression of targets on
    cond (N, E): targets ~ mean + (cond - centre) @ weights, weights = (C'C + penalty I)^-1 C'T
    with C the centred cond. `targets` are the N target rows as batches in cond's order, read
    once (a bank streams through; C'T needs no centred targets since C's columns sum to 0)."""
    cond = cond.double()
    centre = cond.mean(0)
    c = cond - centre
    cross = sums = None
    start = 0
    for batch in targets:
        batch = batch.double()
        rows = c[start : start + len(batch)]
        cross = rows.T @ batch if cross is None else cross.addmm_(rows.T, batch)
        sums = batch.sum(0) if sums is None else sums.add_(batch.sum(0))
        start += len(batch)
    if cross is None or start != len(cond):
        raise LorasynthError(f"{start} target rows for {len(cond)} conditions")
    gram = c.T @ c + penalty * torch.eye(c.shape[1], dtype=c.dtype)
    return centre, torch.linalg.solve(gram, cross), sums / start


class RidgeRepresentation(PcaRepresentation):
    """A basis like PCA's (mean and orthonormal rows), fitted to what the condition predicts."""

    kind = "ridge"

    @classmethod
    def fit_predictable(
        cls, z: torch.Tensor, cond: torch.Tensor, k: int, ridge: float = 1e-2
    ) -> RidgeRepresentation:
        """The k principal directions of a ridge regression of z (N, D) on cond (N, E).

        Past the fit's rank min(N, E), the rest are the principal directions of what the fit
        leaves (z less its projection on the first ones): a prior over them is no longer
        confined to the span a linear map of the condition reaches."""
        if k > min(z.shape):
            raise LorasynthError(
                f"ridge dimension {k} exceeds min(rows, values) = {min(z.shape)} of the bank"
            )
        centre, weights, mean = ridge_regression(cond, [z], ridge * len(cond))
        fitted = (cond.double() - centre) @ weights  # (N, D), rank <= E
        _, _, vh = torch.linalg.svd(fitted, full_matrices=False)
        basis = vh[: min(k, *cond.shape)]
        if k > len(basis):
            centred = z.double() - mean
            residual = centred - (centred @ basis.T) @ basis
            extra = k - len(basis)
            with torch.random.fork_rng():  # pca_lowrank's random sketch, fixed, in private
                torch.manual_seed(0)
                q = min(extra + 10, min(z.shape))
                _, _, v = torch.pca_lowrank(residual, q=q, center=False, niter=4)
            basis = torch.cat([basis, v[:, :extra].T])
        return cls(mean.float(), basis.float().contiguous())


class LinearSkip:
    """latent ~ (cond - centre) @ weights + bias: a ridge map from condition to prior latent.

    A prior with one diffuses over the residual and adds the map back when sampling."""

    def __init__(self, centre: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> None:
        self.centre, self.weights, self.bias = centre, weights, bias

    def __call__(self, cond: torch.Tensor) -> torch.Tensor:
        return (cond.to(self.weights) - self.centre) @ self.weights + self.bias

    @classmethod
    def fit(cls, cond: torch.Tensor, latents: torch.Tensor, ridge: float = 1e-2) -> LinearSkip:
        centre, weights, bias = ridge_regression(cond, [latents], ridge)
        return cls(centre.float(), weights.float(), bias.float())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"skip_centre": self.centre, "skip_weights": self.weights, "skip_bias": self.bias}

    @classmethod
    def from_tensors(cls, extra: dict[str, torch.Tensor]) -> LinearSkip | None:
        if "skip_weights" not in extra:
            return None
        return cls(extra["skip_centre"], extra["skip_weights"], extra["skip_bias"])

    def to(self, device: torch.device) -> LinearSkip:
        return LinearSkip(self.centre.to(device), self.weights.to(device), self.bias.to(device))


def check_representation(kind: str) -> str:
    if kind not in REPRESENTATIONS:
        raise LorasynthError(
            f"unknown representation {kind!r}; choose one of {', '.join(REPRESENTATIONS)}"
        )
    return kind
