"""`bank ingest`: canonicalize a folder of LoRA files into a bank, in parallel and resumably.

Files are taken in sorted order and appended chunk by chunk; each chunk is one atomic append,
so after a kill a rerun skips the ids already stored and goes on. Bad files are reported with
their reason and skipped; they never stop the run or touch the bank.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from lorasynth.bank.normaliser import refit_normaliser
from lorasynth.bank.store import Bank
from lorasynth.errors import LorasynthError
from lorasynth.lora.canonical import flatten_batch
from lorasynth.lora.formats import read_lora
from lorasynth.lora.layout import LoraLayout
from lorasynth.lora.safetensors_io import PICKLE_SUFFIXES

LORA_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)  # pickles are listed only to be reported


@dataclass
class IngestReport:
    ingested: int = 0
    skipped: int = 0  # already in the bank (a resumed run)
    failed: list[dict[str, str]] = field(default_factory=list)
    rows: int = 0
    layout_hash: str = ""
    normaliser_hash: str | None = None

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def find_lora_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise LorasynthError(f"{folder}: not a directory")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in LORA_SUFFIXES)


def file_id(folder: Path, file: Path) -> str:
    """Row id: the path under the folder, without suffix (stable across reruns)."""
    return file.relative_to(folder).with_suffix("").as_posix()


def ingest(
    folder: str | os.PathLike[str],
    bank_path: str | os.PathLike[str],
    layout: LoraLayout | None = None,
    workers: int = 2,
    chunk: int = 256,
    normalise: bool = True,
    progress: bool = True,
    domain: str | None = None,
) -> IngestReport:
    """Canonicalize every LoRA file under `folder` into the bank at `bank_path`.

    `domain` (lorasynth.domains; default: an existing bank's, else faces) is recorded in a new
    bank; a file whose `lorasynth.domain` metadata names another domain is a failed file."""
    from lorasynth.domains import check_same_domain, get_domain

    folder = Path(folder)
    files = find_lora_files(folder)
    report = IngestReport()
    bank = Bank(bank_path) if (Path(bank_path) / "manifest.json").exists() else None
    if bank is not None:
        layout = _check_layout(bank, layout)
        if domain is not None:
            check_same_domain(f"bank {bank.path}", bank.domain, "--domain", domain)
    domain = get_domain(domain or (bank.domain if bank is not None else None)).name
    pending = []
    for f in files:
        if bank is not None and file_id(folder, f) in bank:
            report.skipped += 1
        else:
            pending.append(f)
    if layout is None:
        layout, pending = _layout_from_first_good(pending, report)
    if layout is not None and bank is None:
        bank = Bank.create(bank_path, layout, extra={"domain": domain})
    if bank is None or layout is None:
        if not files:
            raise LorasynthError(f"{folder}: no LoRA files (*.safetensors) found")
        return report

    batches = [pending[i : i + chunk] for i in range(0, len(pending), chunk)]
    bar = tqdm(total=len(pending), unit="lora", desc="ingest", disable=not progress)
    with _executor(workers) as pool:
        jobs = _run(pool, [(folder, part, layout, domain) for part in batches])
        for ids, vectors, failures in jobs:
            bank.append(ids, vectors)
            report.ingested += len(ids)
            report.failed.extend(failures)
            bar.update(len(ids) + len(failures))
    bar.close()
    report.rows, report.layout_hash = len(bank), bank.layout_hash
    if normalise and len(bank) >= 2:
        report.normaliser_hash = refit_normaliser(bank).hash
    return report


def _check_layout(bank: Bank, layout: LoraLayout | None) -> LoraLayout:
    stored = bank.layout
    if layout is not None and layout.hash != stored.hash:
        raise LorasynthError(
            f"{bank.path}: bank holds layout {stored.hash}, but {layout.describe()} was asked for"
        )
    return stored


def _layout_from_first_good(
    files: list[Path], report: IngestReport
) -> tuple[LoraLayout | None, list[Path]]:
    """A new bank's layout is the first readable file's; bad files before it are reported."""
    for k, f in enumerate(files):
        try:
            return read_lora(f).layout(), files[k:]
        except LorasynthError as exc:
            report.failed.append({"file": str(f), "error": str(exc)})
    return None, []


def _canonicalize_part(
    folder: Path, files: list[Path], layout: LoraLayout, domain: str = "faces"
) -> tuple[list[str], torch.Tensor, list[dict[str, str]]]:
    """Worker: read and canonicalize one chunk; bad files become failure records."""
    from lorasynth.domains import check_same_domain

    good, ids, failures = [], [], []
    for f in files:
        try:
            lora = read_lora(f, layout=layout)
            stored = lora.metadata.get("lorasynth.domain")
            if stored:  # files from elsewhere carry no domain: accepted as the bank's
                check_same_domain(f"{f}", stored, "the bank", domain)
            good.append(lora)
            ids.append(file_id(folder, f))
        except LorasynthError as exc:
            failures.append({"file": str(f), "error": str(exc)})
    if not good:
        return ids, torch.empty(0, layout.size), failures
    return ids, flatten_batch(good, layout), failures


def _init_worker() -> None:
    torch.set_num_threads(1)  # one thread per process: torch threads fight over 2 cores


class _InlineExecutor(Executor):
    def submit(self, fn, /, *args, **kwargs):
        from concurrent.futures import Future

        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _executor(workers: int) -> Executor:
    if workers <= 1:
        return _InlineExecutor()
    return ProcessPoolExecutor(max_workers=workers, initializer=_init_worker)


def _run(pool: Executor, tasks: list[tuple]) -> Iterator[tuple]:
    # Keep at most a few chunks in flight so memory stays bounded; yield in submission order
    # so ids land in the bank in sorted file order.
    in_flight = []
    for task in tasks:
        in_flight.append(pool.submit(_canonicalize_part, *task))
        if len(in_flight) > 2:
            yield in_flight.pop(0).result()
    while in_flight:
        yield in_flight.pop(0).result()
