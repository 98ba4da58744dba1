"""Per-coordinate z-scoring of canonical vectors, fitted on a bank and stored with its hash."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from lorasynth.errors import LorasynthError
from lorasynth.lora.safetensors_io import load_tensors, save_tensors

NORMALISER_FILE = "normaliser.safetensors"
# Coordinates that never vary (zero padding, or a constant) keep std 1 instead of dividing by ~0.
_MIN_STD = 1e-8


@dataclass(frozen=True)
class Normaliser:
    mean: torch.Tensor  # (dim,) float32
    std: torch.Tensor  # (dim,) float32, > 0
    layout_hash: str
    rows: int

    @classmethod
    def fit(cls, batches, layout_hash: str) -> Normaliser:
        """Streaming fit over an iterable of (n, dim) batches; float64 sums, one pass."""
        total = 0
        sum_ = sum_sq = shift = None
        for batch in batches:
            batch = batch.double()
            if shift is None:  # shifting by the first row keeps the one-pass variance stable
                shift = batch[0].clone()
                sum_ = torch.zeros_like(shift)
                sum_sq = torch.zeros_like(shift)
            centred = batch - shift
            sum_ += centred.sum(0)
            sum_sq += (centred * centred).sum(0)
            total += len(batch)
        if total < 2:
            raise LorasynthError("need at least 2 vectors to fit a normaliser")
        mean_c = sum_ / total
        var = (sum_sq / total - mean_c * mean_c).clamp_min(0) * total / (total - 1)
        std = var.sqrt()
        std = torch.where(std < _MIN_STD, torch.ones_like(std), std)
        return cls((mean_c + shift).float(), std.float(), layout_hash, total)

    @cached_property
    def hash(self) -> str:
        digest = hashlib.sha256(self.layout_hash.encode())
        digest.update(self.mean.numpy().tobytes())
        digest.update(self.std.numpy().tobytes())
        return digest.hexdigest()[:16]

    def encode(self, vectors: torch.Tensor) -> torch.Tensor:
        return (vectors - self.mean.to(vectors)) / self.std.to(vectors)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std.to(z) + self.mean.to(z)

    def save(self, path: str | os.PathLike[str]) -> Path:
        meta = {
            "kind": "lorasynth-normaliser",
            "layout_hash": self.layout_hash,
            "rows": str(self.rows),
            "normaliser_hash": self.hash,
        }
        save_tensors(path, {"mean": self.mean, "std": self.std}, meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], layout_hash: str | None = None) -> Normaliser:
        tensors, meta = load_tensors(path)
        if meta.get("kind") != "lorasynth-normaliser" or set(tensors) != {"mean", "std"}:
            raise LorasynthError(f"{path}: not a lorasynth normaliser file")
        norm = cls(
            tensors["mean"].float(), tensors["std"].float(), meta["layout_hash"], int(meta["rows"])
        )
        if norm.hash != meta.get("normaliser_hash"):
            raise LorasynthError(f"{path}: contents do not match the stored normaliser hash")
        if layout_hash is not None and norm.layout_hash != layout_hash:
            raise LorasynthError(
                f"{path}: normaliser is for layout {norm.layout_hash}, expected {layout_hash}"
            )
        return norm


def refit_normaliser(bank) -> Normaliser:
    """Fit a normaliser on every row of `bank` (a Bank) and save it as BANK/normaliser.safetensors."""
    norm = Normaliser.fit(bank.iter_batches(1024), bank.layout_hash)
    norm.save(bank.path / NORMALISER_FILE)
    return norm
