"""The bank: canonical LoRA vectors in sharded, memory-mapped safetensors with a JSON manifest.

    BANK/manifest.json        layout hash, dtype, dim, row count, ids, sha256 per shard
    BANK/layout.json          the LoraLayout rows (so vectors can be turned back into LoRAs)
    BANK/shard-00000.safetensors   tensor "vectors" (rows, dim), float32 (or float16 to ship)

An append writes whole new shards (temp file, fsync, rename) and only then the manifest, so a
crash at any point leaves the bank as it was before the append; readers see old or new, never
half. Reads go through safetensors' mmap, so memory does not grow with bank size.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from lorasynth.atomic import file_lock, sha256_file, write_json_atomic
from lorasynth.errors import LorasynthError
from lorasynth.lora.layout import LoraLayout
from lorasynth.lora.safetensors_io import read_header, save_tensors

MANIFEST = "manifest.json"
LAYOUT = "layout.json"
BANK_FORMAT = "lorasynth-bank/1"
DEFAULT_SHARD_ROWS = 1024
# Shards stay under this many bytes (and DEFAULT_SHARD_ROWS rows), so a shipped bank of wide
# rows never becomes one file too big for git hosting's per-file limits.
DEFAULT_SHARD_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Shard:
    file: str
    rows: int
    sha256: str


class Bank:
    """A read/append handle on a bank directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._load()

    def _load(self) -> None:
        """(Re)read the manifest; called again after appends, which may come from elsewhere."""
        self._handles: dict[str, object] = {}
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise LorasynthError(
                f"{self.path}: not a bank (no {MANIFEST}); create one with `lorasynth bank ingest`"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
            self.layout_hash: str = manifest["layout_hash"]
            self.dtype: str = manifest["dtype"]
            self.dim: int = int(manifest["dim"])
            self.ids: list[str] = list(manifest["ids"])
            self.shards: list[Shard] = [Shard(**s) for s in manifest["shards"]]
            self.extra: dict = dict(manifest.get("extra", {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise LorasynthError(f"{manifest_path}: malformed bank manifest ({exc})") from None
        if sum(s.rows for s in self.shards) != len(self.ids):
            raise LorasynthError(f"{manifest_path}: shard rows do not add up to the id count")
        self._row_of = {rid: i for i, rid in enumerate(self.ids)}
        self._starts = [0]
        for shard in self.shards:
            self._starts.append(self._starts[-1] + shard.rows)

    # ---- creation ------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        layout: LoraLayout,
        extra: dict | None = None,
        dtype: str = "float32",
    ) -> Bank:
        """An empty bank for vectors of `layout` (refuses to overwrite an existing bank).

        `dtype` float16 halves the bytes (for banks that ship); rows always read as float32.
        """
        path = Path(path)
        if dtype not in _DTYPES:
            raise LorasynthError(f"bank dtype {dtype!r}: choose one of {', '.join(_DTYPES)}")
        if (path / MANIFEST).exists():
            raise LorasynthError(f"{path}: a bank already exists here")
        path.mkdir(parents=True, exist_ok=True)
        (path / LAYOUT).write_text(layout.to_json() + "\n")
        manifest = _manifest(layout.hash, layout.size, [], [], extra or {}, dtype)
        write_json_atomic(path / MANIFEST, manifest)
        return cls(path)

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike[str],
        layout: LoraLayout,
        extra: dict | None = None,
        dtype: str = "float32",
    ) -> Bank:
        """The bank at `path`, or a new one (`dtype` applies only to a new bank)."""
        if (Path(path) / MANIFEST).exists():
            bank = cls(path)
            if bank.layout_hash != layout.hash:
                raise LorasynthError(
                    f"{path}: bank holds layout {bank.layout_hash}, the LoRAs have {layout.describe()}"
                )
            if extra and "domain" in extra:
                from lorasynth.domains import check_same_domain

                check_same_domain(f"bank {path}", bank.domain, "the LoRAs to add", extra["domain"])
            return bank
        return cls.create(path, layout, extra, dtype)

    # ---- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def domain(self) -> str:
        """The subject domain of the bank's LoRAs; banks from before domains are "faces"."""
        return self.extra.get("domain") or "faces"

    @property
    def layout(self) -> LoraLayout:
        layout = LoraLayout.from_json((self.path / LAYOUT).read_text())
        if layout.hash != self.layout_hash:
            raise LorasynthError(
                f"{self.path / LAYOUT}: layout hash {layout.hash} differs from the manifest's "
                f"{self.layout_hash}; the bank is corrupt"
            )
        return layout

    def row_of(self, row_id: str) -> int:
        try:
            return self._row_of[row_id]
        except KeyError:
            raise LorasynthError(f"{self.path}: no row with id {row_id!r}") from None

    def __contains__(self, row_id: object) -> bool:
        return row_id in self._row_of

    def vectors(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows [start, stop) as a float32 tensor (reads only the shards that hold them)."""
        stop = len(self) if stop is None else min(stop, len(self))
        if not 0 <= start <= stop:
            raise LorasynthError(f"bad row range [{start}, {stop}) for a bank of {len(self)} rows")
        parts = []
        for k, shard in enumerate(self.shards):
            lo, hi = max(start, self._starts[k]), min(stop, self._starts[k + 1])
            if lo < hi:
                parts.append(self._read_slice(shard, lo - self._starts[k], hi - self._starts[k]))
        if not parts:
            return torch.empty(0, self.dim, dtype=torch.float32)
        return torch.cat(parts).float()

    def vector(self, row: int | str) -> torch.Tensor:
        index = self.row_of(row) if isinstance(row, str) else row
        return self.vectors(index, index + 1)[0]

    def gather(self, rows: Sequence[int]) -> torch.Tensor:
        """Rows by index, in the order given (for shuffled training batches)."""
        out = torch.empty(len(rows), self.dim, dtype=torch.float32)
        for n, row in enumerate(rows):
            k = _shard_index(self._starts, row)
            local = row - self._starts[k]
            out[n] = self._read_slice(self.shards[k], local, local + 1)[0]
        return out

    def iter_batches(
        self, batch_size: int = 256, stop: int | None = None
    ) -> Iterator[torch.Tensor]:
        """The rows in order, `batch_size` at a time, up to row `stop` (None: all)."""
        end = len(self) if stop is None else min(stop, len(self))
        for start in range(0, end, batch_size):
            yield self.vectors(start, min(start + batch_size, end))

    def _read_slice(self, shard: Shard, lo: int, hi: int) -> torch.Tensor:
        try:
            handle = self._handles.get(shard.file)
            if handle is None:  # keep shards open: each is an mmap, cheap to hold
                handle = self._handles[shard.file] = safe_open(
                    str(self.path / shard.file), framework="pt"
                )
            return handle.get_slice("vectors")[lo:hi]
        except (SafetensorError, OSError, KeyError) as exc:
            raise LorasynthError(
                f"{self.path / shard.file}: unreadable shard ({exc}); run `lorasynth bank verify`"
            ) from None

    # ---- appending -----------------------------------------------------------------------
    def append(
        self, ids: Sequence[str], vectors: torch.Tensor, shard_rows: int | None = None
    ) -> None:
        """Add rows atomically: new shards first, then the manifest; ids must be new.

        Shards hold `shard_rows` rows each (default: as many as fit DEFAULT_SHARD_BYTES, at
        most DEFAULT_SHARD_ROWS)."""
        if len(ids) != len(vectors):
            raise LorasynthError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(ids) == 0:
            return
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise LorasynthError(
                f"vectors have shape {tuple(vectors.shape)}; bank rows have {self.dim} values"
            )
        if not torch.isfinite(vectors).all():
            raise LorasynthError("vectors contain NaN or Inf; refusing to store them")
        with self._lock():
            self._load()  # another process may have appended meanwhile
            dup = next((i for i in ids if i in self._row_of), None)
            if dup is not None or len(set(ids)) != len(ids):
                raise LorasynthError(
                    f"{self.path}: id {dup or 'given twice'!r} already in the bank"
                )
            shards = list(self.shards)
            data = vectors.detach().to(_DTYPES[self.dtype][0]).contiguous()
            if shard_rows is None:
                shard_rows = self.default_shard_rows()
            if not torch.isfinite(data).all():
                raise LorasynthError(f"vectors overflow the bank's {self.dtype}; not stored")
            for lo in range(0, len(ids), shard_rows):
                chunk = data[lo : lo + shard_rows].clone()
                name = f"shard-{len(shards):05d}.safetensors"
                save_tensors(
                    self.path / name, {"vectors": chunk}, {"layout_hash": self.layout_hash}
                )
                shards.append(Shard(name, len(chunk), sha256_file(self.path / name)))
            manifest = _manifest(
                self.layout_hash, self.dim, [*self.ids, *ids], shards, self.extra, self.dtype
            )
            write_json_atomic(self.path / MANIFEST, manifest)
            self._load()

    def default_shard_rows(self) -> int:
        row_bytes = self.dim * _DTYPES[self.dtype][0].itemsize
        return max(1, min(DEFAULT_SHARD_ROWS, DEFAULT_SHARD_BYTES // row_bytes))

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.path / ".lock")

    # ---- checking ------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Problems found (empty when healthy): hashes, row counts, dtypes, the layout file."""
        problems = []
        try:
            self.layout  # noqa: B018 - validates layout.json against the manifest
        except (LorasynthError, OSError) as exc:
            problems.append(str(exc))
        for shard in self.shards:
            file = self.path / shard.file
            if not file.is_file():
                problems.append(f"{file}: missing shard")
                continue
            if sha256_file(file) != shard.sha256:
                problems.append(f"{file}: corrupted shard (sha256 differs from the manifest)")
                continue
            try:
                header, _ = read_header(file)
                shape = header["vectors"]["shape"]
                if (
                    shape != [shard.rows, self.dim]
                    or header["vectors"]["dtype"] != _DTYPES.get(self.dtype, (None, None))[1]
                ):
                    problems.append(
                        f"{file}: shard holds {shape}, manifest says [{shard.rows}, {self.dim}]"
                    )
            except (LorasynthError, KeyError) as exc:
                problems.append(f"{file}: corrupted shard ({exc})")
        return problems

    def info(self) -> dict:
        """The `bank info --json` summary."""
        return {
            "rows": len(self),
            "layout_hash": self.layout_hash,
            "dtype": self.dtype,
            "dim": self.dim,
            "shards": len(self.shards),
            "domain": self.domain,
            "ids": self.ids,
            **({"extra": self.extra} if self.extra else {}),
        }


def copy_bank(
    src: Bank,
    dst: str | os.PathLike[str],
    dtype: str = "float16",
    ids: Sequence[str] | None = None,
) -> Bank:
    """A copy of `src` (only the rows `ids`, in that order; None: all) at `dst`, which must
    not hold a bank, with rows stored as `dtype`; the bank's other files (normaliser,
    conditions) are copied unchanged."""
    dst = Path(dst)
    out = Bank.create(dst, src.layout, src.extra, dtype)
    step = out.default_shard_rows()
    if ids is None:
        for start in range(0, len(src), step):
            stop = min(len(src), start + step)
            out.append(src.ids[start:stop], src.vectors(start, stop))
    else:
        rows = [src.row_of(i) for i in ids]
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            out.append([src.ids[r] for r in part], src.gather(part))
    managed = {MANIFEST, LAYOUT, ".lock", *(s.file for s in src.shards)}
    for file in sorted(src.path.iterdir()):
        if file.is_file() and file.name not in managed:
            shutil.copy2(file, dst / file.name)
    return Bank(dst)


# Bank row dtypes: torch dtype and the safetensors name of the shards' tensors.
_DTYPES = {"float32": (torch.float32, "F32"), "float16": (torch.float16, "F16")}


def _manifest(
    layout_hash: str,
    dim: int,
    ids: Sequence[str],
    shards: Sequence[Shard],
    extra: dict,
    dtype: str = "float32",
) -> dict:
    return {
        "format": BANK_FORMAT,
        "layout_hash": layout_hash,
        "dtype": dtype,
        "dim": dim,
        "rows": len(ids),
        "ids": list(ids),
        "shards": [s.__dict__ for s in shards],
        "extra": extra,
    }


def _shard_index(starts: Sequence[int], row: int) -> int:
    import bisect

    if not 0 <= row < starts[-1]:
        raise LorasynthError(f"row {row} out of range for a bank of {starts[-1]} rows")
    return bisect.bisect_right(starts, row) - 1
