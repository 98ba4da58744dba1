"""Content-addressed blobs: `DIR/blobs/ab/cdef...` named by the sha256 of their bytes.

Writes are atomic (temp file, fsync, rename). The database row that references a blob is
committed only after the blob is on disk, so a crash can leave an unreferenced blob but never
a row without its blob; `sweep` (run at every start) deletes those leftovers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from lorasynth.atomic import write_bytes_atomic
from lorasynth.errors import LorasynthError


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise LorasynthError(f"not a sha256 hex digest: {sha!r}")
        return self.root / sha[:2] / sha[2:]

    def put(self, data: bytes) -> str:
        """Store bytes (once: equal content is one file); return their sha256."""
        sha = sha256_hex(data)
        target = self.path(sha)
        if not target.is_file():
            write_bytes_atomic(target, data)
        return sha

    def get(self, sha: str) -> bytes:
        target = self.path(sha)
        if not target.is_file():
            raise LorasynthError(f"blob {sha} is missing from {self.root}")
        return target.read_bytes()

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def delete(self, sha: str) -> bool:
        """Remove a blob (the caller has checked that no row references it)."""
        target = self.path(sha)
        existed = target.is_file()
        target.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            target.parent.rmdir()  # only succeeds when empty
        return existed

    def all(self) -> list[str]:
        return sorted(
            p.parent.name + p.name
            for p in self.root.glob("??/*")
            if p.is_file() and not p.name.startswith(".")
        )

    def sweep(self, referenced: Iterable[str]) -> list[str]:
        """Delete blobs no row references and temp files of interrupted writes."""
        keep = set(referenced)
        removed = []
        for p in self.root.glob("??/.*.tmp"):
            p.unlink(missing_ok=True)
        for sha in self.all():
            if sha not in keep:
                self.delete(sha)
                removed.append(sha)
        return removed
