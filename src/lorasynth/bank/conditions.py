"""Condition embeddings of a bank's identities: K embeddings of different photos per row.

The prior learns p(LoRA | embedding of a photo of that subject); several photos per subject
teach it that nuisances (pose, light, background) do not change who the subject is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lorasynth.errors import LorasynthError
from lorasynth.lora.safetensors_io import load_tensors, save_tensors

CONDITIONS_FILE = "conditions.safetensors"


@dataclass(frozen=True)
class ConditionTable:
    ids: list[str]
    embeddings: torch.Tensor  # (N, K, E), L2-normalised rows
    embedder_id: str
    domain: str = "faces"  # the subjects' domain (tables from before domains: faces)

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 3 or self.embeddings.shape[0] != len(self.ids):
            raise LorasynthError(
                f"condition embeddings must be (rows, photos, dim) with one row per id; "
                f"got {tuple(self.embeddings.shape)} for {len(self.ids)} ids"
            )

    def save(self, path: str | os.PathLike[str]) -> Path:
        meta = {
            "kind": "lorasynth-conditions",
            "ids": json.dumps(self.ids),
            "embedder_id": self.embedder_id,
            "domain": self.domain,
        }
        save_tensors(path, {"embeddings": self.embeddings.float()}, meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], embedder_id: str | None = None) -> ConditionTable:
        tensors, meta = load_tensors(path)
        if meta.get("kind") != "lorasynth-conditions":
            raise LorasynthError(f"{path}: not a lorasynth condition table")
        from lorasynth.domains import embedder_domain

        domain = meta.get("domain") or embedder_domain(meta["embedder_id"]) or "faces"
        table = cls(json.loads(meta["ids"]), tensors["embeddings"], meta["embedder_id"], domain)
        if embedder_id is not None and table.embedder_id != embedder_id:
            raise LorasynthError(
                f"{path}: embeddings come from {table.embedder_id!r}, expected {embedder_id!r}"
            )
        return table

    def index_for(self, ids: list[str]) -> torch.Tensor:
        """Row of this table for each of `ids` (e.g. a bank's ids, in bank order)."""
        where = {rid: i for i, rid in enumerate(self.ids)}
        missing = [rid for rid in ids if rid not in where]
        if missing:
            raise LorasynthError(
                f"condition table lacks {len(missing)} of the bank's ids (first: {missing[0]!r})"
            )
        return torch.tensor([where[rid] for rid in ids])

    def mean_embeddings(self) -> torch.Tensor:
        """One L2-normalised embedding per row: the mean over its photos."""
        return torch.nn.functional.normalize(self.embeddings.mean(1), dim=-1)

    def mean_embeddings_for(self, ids: list[str]) -> torch.Tensor:
        """`mean_embeddings` of `ids`, in their order (e.g. a bank's rows)."""
        return self.mean_embeddings()[self.index_for(ids)]
