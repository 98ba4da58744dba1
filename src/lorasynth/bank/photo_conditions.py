"""A bank's condition table from folders of photos: PHOTOS/<row id>/*.{png,jpg,...}.

For banks from the wild (weights2weights published the identity images each of its LoRAs was
trained on, one folder per model), the prior's conditions are embeddings of those photos:
K per row, with the embedder's id so a prior refuses a mismatched embedder later.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lorasynth.bank.conditions import CONDITIONS_FILE, ConditionTable
from lorasynth.bank.store import Bank
from lorasynth.errors import LorasynthError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def photo_folders(bank: Bank, photos: Path, per_row: int) -> list[list[Path]]:
    """The first `per_row` images (sorted by name) of PHOTOS/<id>/ for every bank id, cycling
    when a folder has fewer, so every row has K photos."""
    out = []
    for row_id in bank.ids:
        folder = photos / row_id
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise LorasynthError(
                f"{folder}: no photos for bank row {row_id!r} (expected PHOTOS/<row id>/*.png|jpg)"
            )
        out.append([files[k % len(files)] for k in range(per_row)])
    return out


def build_photo_conditions(
    bank_path: str | os.PathLike[str],
    photos: str | os.PathLike[str],
    embedder,
    per_row: int = 4,
    progress: bool = True,
) -> Path:
    """Embed PHOTOS/<id>/ for every row -> BANK/conditions.safetensors (ids in bank order)."""
    bank = Bank(bank_path)
    photos = Path(photos)
    if not photos.is_dir():
        raise LorasynthError(f"{photos}: not a directory of per-row photo folders")
    folders = photo_folders(bank, photos, per_row)  # every folder checked before any work
    rows = []
    for files in tqdm(folders, desc="conditions", unit="row", disable=not progress):
        rows.append(torch.from_numpy(np.asarray(embedder.embed(files), dtype=np.float32)))
    table = ConditionTable(list(bank.ids), torch.stack(rows), embedder.embedder_id, bank.domain)
    return table.save(bank.path / CONDITIONS_FILE)
