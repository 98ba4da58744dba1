"""Strict safetensors reading: pickles, truncation and oversized headers are refused up front.

safetensors itself already refuses many of these, but with messages that do not name the file
or say what to do; these checks run first so the user sees one clear line.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lorasynth.atomic import atomic_path
from lorasynth.errors import LorasynthError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors spec's own limit


def read_header(path: str | os.PathLike[str]) -> tuple[dict, int]:
    """Validated JSON header and header length of a safetensors file; refuses anything else."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LorasynthError(
            f"{path}: {path.suffix} files are pickles and can run code when loaded; "
            "refused. Convert it to .safetensors with a trusted tool first"
        )
    if not path.is_file():
        raise LorasynthError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
        if len(head) < 9 or head[8:9] != b"{":
            if _looks_like_pickle(head):
                raise LorasynthError(
                    f"{path}: is a pickle (or torch.save zip), not safetensors; refused because "
                    "loading pickles can run code"
                )
            if len(head) < 9:
                raise LorasynthError(f"{path}: truncated: {size} bytes, too short for safetensors")
            raise LorasynthError(f"{path}: not a safetensors file (no JSON header)")
        (n,) = struct.unpack("<Q", head[:8])
        if n > MAX_HEADER_BYTES:
            raise LorasynthError(
                f"{path}: header claims {n:,} bytes, over the {MAX_HEADER_BYTES:,}-byte limit; "
                "the file is corrupt or not safetensors"
            )
        if 8 + n > size:
            raise LorasynthError(
                f"{path}: truncated: header needs {8 + n:,} bytes, file has {size:,}"
            )
        fh.seek(8)
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LorasynthError(f"{path}: header is not valid JSON; not a safetensors file") from None
    if not isinstance(header, dict):
        raise LorasynthError(f"{path}: header is not a JSON object; not a safetensors file")
    data_len = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            end = int(info["data_offsets"][1])
        except (KeyError, TypeError, IndexError, ValueError):
            raise LorasynthError(f"{path}: tensor {key!r} has no valid data_offsets") from None
        if end > data_len:
            raise LorasynthError(
                f"{path}: truncated: tensor {key!r} ends at byte {end:,} of data, "
                f"file holds {data_len:,}"
            )
    return header, n


def load_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the string metadata of a safetensors file, after the strict checks."""
    header, _ = read_header(path)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise LorasynthError(f"{path}: __metadata__ is not a JSON object")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise LorasynthError(f"{path}: not a readable safetensors file: {exc}") from None
    return tensors, {str(k): str(v) for k, v in metadata.items()}


_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


def serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with keys and metadata in sorted order: equal inputs, equal bytes.

    (safetensors' own writer orders metadata at random, so its files are not reproducible.)
    """
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in _DTYPES:
            raise LorasynthError(
                f"tensor {name!r}: dtype {t.dtype} cannot be stored in safetensors"
            )
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def save_tensors(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> None:
    """Write a safetensors file atomically and reproducibly (sorted header; temp file, fsync, rename)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise LorasynthError(f"{path}: output must end in .safetensors")
    data = serialize(tensors, {str(k): str(v) for k, v in metadata.items()})
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _looks_like_pickle(head: bytes) -> bool:
    # Pickle protocol 2+ starts with 0x80 <proto>; torch.save's default is a zip archive.
    return head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"


STORED_DTYPE_KEY = "stored_dtype"


def save_half_copy(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    keys: Callable[[str], bool] = lambda key: True,
    metadata: dict[str, str] | None = None,
) -> int:
    """Copy a safetensors file with its float32 tensors (those `keys` selects) stored as float16.

    Shipped weights are stored at half the bytes; loaders upcast to float32, since CPU
    inference wants float32. Metadata is kept (plus stored_dtype=float16), so hashes that name
    the trained model (weights_hash) still name it; `metadata` adds keys. Returns the bytes
    written."""
    tensors, source_metadata = load_tensors(src)
    halved = {
        key: t.half() if t.dtype == torch.float32 and keys(key) else t for key, t in tensors.items()
    }
    save_tensors(dst, halved, {**source_metadata, **(metadata or {}), STORED_DTYPE_KEY: "float16"})
    return Path(dst).stat().st_size
