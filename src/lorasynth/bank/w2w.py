"""Import the weights2weights bank: ~65k rank-1 identity LoRAs on SD1.5, as one flat tensor.

weights2weights (Dravid et al. 2024, snap-research/weights2weights) trained one PEFT LoRA per
identity (train.sh: `--lora_r 1 --lora_alpha 27`, targets to_q and to_v of every attention) and
released them as `all_weights.pt`, an (m, 99,648) tensor whose rows were made by
(other/creating_weights_dataset.ipynb):

    w = torch.cat([t.flatten() for t in load_peft_weights(folder).values()])

`load_peft_weights` reads `adapter_model.safetensors`, and safetensors returns keys sorted by
name, so a row is the tensors of the *sorted* PEFT key names
`base_model.model.<module>.lora_A.weight` (1 x in) and `...lora_B.weight` (out x 1):
down_blocks, then mid_block, then up_blocks, and per module lora_A before lora_B. (Their
LoRAw2w class slices the same vector after reordering named_modules to down, mid, up: the same
order.) diffusers' named_modules() order, which LoraLayout uses, lists up_blocks before
mid_block, so the two orders differ; `w2w_segments` maps one to the other by name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from lorasynth.bank.normaliser import refit_normaliser
from lorasynth.bank.store import Bank
from lorasynth.errors import LorasynthError
from lorasynth.lora.canonical import flatten_batch
from lorasynth.lora.formats import LoraFile, LoraModule
from lorasynth.lora.layout import LoraLayout

W2W_RANK = 1
W2W_ALPHA = 27.0  # weights2weights train.sh: --lora_r 1 --lora_alpha 27
W2W_SOURCE = "weights2weights"
Part = Literal["lora_A", "lora_B"]


@dataclass(frozen=True)
class W2wSegment:
    """One tensor of a weights2weights row: values [start, stop) reshape to `shape`."""

    key: str
    module: str
    part: Part
    start: int
    stop: int
    shape: tuple[int, int]


def w2w_key(module: str, part: Part) -> str:
    """The PEFT key weights2weights saved for a module's down (lora_A) or up (lora_B) weight."""
    return f"base_model.model.{module}.{part}.weight"


def w2w_segments(layout: LoraLayout) -> tuple[W2wSegment, ...]:
    """The weights2weights flat order for `layout`'s modules: sorted PEFT key names."""
    if any(row.rank != W2W_RANK for row in layout.rows):
        raise LorasynthError(f"weights2weights LoRAs are rank {W2W_RANK}; {layout.describe()}")
    tensors: list[tuple[str, str, Part, tuple[int, int]]] = []
    for row in layout.rows:
        tensors.append((w2w_key(row.module, "lora_A"), row.module, "lora_A", (1, row.in_features)))
        tensors.append((w2w_key(row.module, "lora_B"), row.module, "lora_B", (row.out_features, 1)))
    tensors.sort(key=lambda t: t[0])  # safetensors' key order, which their flatten loop used
    segments, start = [], 0
    for key, module, part, shape in tensors:
        stop = start + shape[0] * shape[1]
        segments.append(W2wSegment(key, module, part, start, stop, shape))
        start = stop
    return tuple(segments)


def w2w_rows_to_loras(
    rows: torch.Tensor, layout: LoraLayout, alpha: float = W2W_ALPHA
) -> list[LoraFile]:
    """LoRAs (down, up, alpha) from weights2weights rows (n, layout.size), by segment name."""
    if rows.ndim != 2 or rows.shape[1] != layout.size:
        raise LorasynthError(
            f"weights2weights rows have shape {tuple(rows.shape)}; {layout.describe()} needs "
            f"(n, {layout.size})"
        )
    parts: dict[tuple[str, str], torch.Tensor] = {}
    for seg in w2w_segments(layout):
        parts[seg.module, seg.part] = rows[:, seg.start : seg.stop].reshape(-1, *seg.shape)
    return [
        LoraFile(
            {
                m: LoraModule(parts[m, "lora_A"][i], parts[m, "lora_B"][i], float(alpha))
                for m in layout.modules
            }
        )
        for i in range(len(rows))
    ]


def loras_to_w2w_rows(loras: list[LoraFile], layout: LoraLayout) -> torch.Tensor:
    """The inverse: rank-1 LoRAs as weights2weights rows (factors as stored, alpha dropped)."""
    out = torch.empty(len(loras), layout.size)
    for seg in w2w_segments(layout):
        for i, lora in enumerate(loras):
            m = lora.modules[seg.module]
            out[i, seg.start : seg.stop] = (m.down if seg.part == "lora_A" else m.up).reshape(-1)
    return out


# ---- reading the released files --------------------------------------------------------------
_FLOATS = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class W2wSource:
    """Row access to a weights2weights weight matrix (models x values): a .safetensors file with
    one tensor (read slice by slice), or a torch-saved tensor such as all_weights.pt (loaded with
    weights_only=True, memory-mapped where the file format allows)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise LorasynthError(f"{self.path}: no such file")
        suffix = self.path.suffix.lower()
        if suffix == ".safetensors":
            shape, dtype, self._read = self._open_safetensors()
        elif suffix in (".pt", ".pth"):
            tensor = self._open_torch()
            shape, dtype = tuple(tensor.shape), tensor.dtype
            self._read = lambda lo, hi: tensor.reshape(-1, shape[-1])[lo:hi]
        else:
            raise LorasynthError(
                f"{self.path}: expected weights2weights' all_weights.pt or a .safetensors file"
            )
        if len(shape) not in (1, 2) or not dtype.is_floating_point:
            raise LorasynthError(
                f"{self.path}: expected a float (models x values) matrix, found {dtype} of "
                f"shape {list(shape)}"
            )
        self.shape: tuple[int, int] = (1, shape[0]) if len(shape) == 1 else (shape[0], shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as float32."""
        return self._read(start, stop).to(torch.float32)

    def _open_safetensors(self):
        from safetensors import SafetensorError, safe_open

        from lorasynth.lora.safetensors_io import read_header

        header, _ = read_header(self.path)  # refuses pickles in disguise and truncation
        names = [k for k in header if k != "__metadata__"]
        if len(names) != 1:
            raise LorasynthError(
                f"{self.path}: expected one tensor (the weight matrix), found {len(names)}: "
                f"{', '.join(sorted(names)[:5])}"
            )
        info = header[names[0]]
        dtype = _FLOATS.get(info["dtype"], torch.int64)
        try:
            handle = safe_open(str(self.path), framework="pt")
            part = handle.get_slice(names[0])
        except SafetensorError as exc:
            raise LorasynthError(f"{self.path}: unreadable safetensors file ({exc})") from None
        if len(info["shape"]) == 1:
            return tuple(info["shape"]), dtype, lambda lo, hi: part[:][None][lo:hi]
        return tuple(info["shape"]), dtype, lambda lo, hi: part[lo:hi]

    def _open_torch(self) -> torch.Tensor:
        # The one place lorasynth reads a pickle: the user asked to import this file, and
        # weights_only=True refuses anything but tensors and plain containers (no code runs).
        try:
            try:
                obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                # Legacy (non-zip) torch files cannot be memory-mapped.
                obj = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LorasynthError(f"{self.path}: not loadable as plain tensors ({first})") from None
        if isinstance(obj, dict) and len(obj) == 1:
            obj = next(iter(obj.values()))
        if not isinstance(obj, torch.Tensor):
            raise LorasynthError(
                f"{self.path}: expected a tensor (weights2weights' all_weights.pt), found "
                f"{type(obj).__name__}"
            )
        return obj


# ---- the import -----------------------------------------------------------------------------
@dataclass
class W2wImportReport:
    imported: int = 0
    skipped: int = 0
    rows: int = 0
    layout_hash: str = ""
    normaliser_hash: str | None = None

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def row_id(index: int) -> str:
    """Bank id of weights2weights model `index` (its row in all_weights.pt)."""
    return f"w2w-{index:05d}"


def ids_from_folders(folder: str | os.PathLike[str]) -> list[str]:
    """Row ids = the identity-image folder names, sorted as strings: weights2weights
    concatenated its models "in alphanumeric order of the folder names they were trained on"."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LorasynthError(f"{folder}: not a directory of identity folders")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not names:
        raise LorasynthError(f"{folder}: no identity folders inside")
    return names


def import_w2w(
    src: str | os.PathLike[str],
    bank_path: str | os.PathLike[str],
    layout: LoraLayout | None = None,
    alpha: float = W2W_ALPHA,
    chunk: int = 1024,
    limit: int | None = None,
    normalise: bool = True,
    progress: bool = True,
    names: list[str] | None = None,
) -> W2wImportReport:
    """Canonicalize weights2weights rows into the bank (resumable: ids already stored are skipped).

    `layout` defaults to SD1.5 `w2w` rank 1 (99,648 values); give the base model's own layout
    for SD1.5-family fine-tunes (weights2weights used Realistic Vision 5.1, same architecture).
    `names`: one id per row (see ids_from_folders); default w2w-00000, w2w-00001, ...
    """
    layout = layout or LoraLayout.sd15("w2w", W2W_RANK)
    w2w_segments(layout)  # checks the rank
    source = W2wSource(src)
    if source.shape[1] != layout.size:
        raise LorasynthError(
            f"{source.path}: rows have {source.shape[1]:,} values; {layout.describe()} needs "
            f"{layout.size:,} (weights2weights SD1.5 rows have 99,648)"
        )
    bank = Bank.open_or_create(bank_path, layout, extra={"source": W2W_SOURCE, "w2w_alpha": alpha})
    if names is not None and len(names) != len(source):
        raise LorasynthError(
            f"{source.path} has {len(source):,} rows but {len(names):,} names were given; "
            "they must pair up one to one"
        )
    total = len(source) if limit is None else min(limit, len(source))
    report = W2wImportReport()
    bar = tqdm(total=total, unit="lora", desc="import-w2w", disable=not progress)
    for start, stop in _chunks(total, chunk):
        ids = names[start:stop] if names is not None else [row_id(i) for i in range(start, stop)]
        todo = [k for k, i in enumerate(ids) if i not in bank]
        report.skipped += len(ids) - len(todo)
        if todo:
            rows = source.rows(start, stop)[todo]
            if not torch.isfinite(rows).all():
                bad = start + todo[int((~torch.isfinite(rows)).any(dim=1).nonzero()[0])]
                raise LorasynthError(f"{source.path}: row {bad} holds NaN or Inf")
            vectors = flatten_batch(w2w_rows_to_loras(rows, layout, alpha), layout)
            bank.append([ids[k] for k in todo], vectors)
            report.imported += len(todo)
        bar.update(stop - start)
    bar.close()
    report.rows, report.layout_hash = len(bank), bank.layout_hash
    if normalise and len(bank) >= 2:
        report.normaliser_hash = refit_normaliser(bank).hash
    return report


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)
