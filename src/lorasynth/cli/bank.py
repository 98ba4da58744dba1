"""`lorasynth bank ...`: build, inspect and check banks of canonical LoRA vectors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from lorasynth.bank import Bank
from lorasynth.bank.ingest import ingest as run_ingest
from lorasynth.cli.lora import OutFormat
from lorasynth.lora import unflatten, write_lora
from lorasynth.lora.layout import PRESETS, LoraLayout

app = typer.Typer(help="Banks of canonical LoRA vectors.", no_args_is_help=True)


@app.command()
def ingest(
    folder: Path,
    bank: Path,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 2,
    chunk: Annotated[int, typer.Option(min=1, help="Files per atomic append.")] = 256,
    preset: Annotated[
        str | None,
        typer.Option(help=f"Expect the SD1.5 layout of this preset ({', '.join(PRESETS)})."),
    ] = None,
    rank: Annotated[int, typer.Option(min=1, help="Rank of the --preset layout.")] = 1,
    base: Annotated[
        str | None,
        typer.Option(help="Take the --preset layout from this base model's UNet instead of SD1.5."),
    ] = None,
    normalise: Annotated[bool, typer.Option(help="Refit BANK/normaliser.safetensors.")] = True,
    strict: Annotated[bool, typer.Option(help="Exit 1 if any file was bad.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    domain: Annotated[
        str | None,
        typer.Option(help="Subject domain of the LoRAs: faces or products (new bank: faces)."),
    ] = None,
) -> None:
    """Canonicalize every LoRA file under FOLDER into BANK (resumable; bad files are reported)."""
    layout = _preset_layout(preset, rank, base)
    report = run_ingest(
        folder,
        bank,
        layout=layout,
        workers=workers,
        chunk=chunk,
        normalise=normalise,
        domain=domain,
    )
    for failure in report.failed:
        print(f"warning: skipped {failure['error']}", file=sys.stderr)
    counts = f"ingested {report.ingested}, already present {report.skipped}"
    _print_report(report, as_json, f"{counts}, failed {len(report.failed)}")
    if strict and report.failed:
        raise typer.Exit(1)


@app.command("import-w2w")
def import_w2w(
    src: Annotated[Path, typer.Argument(help="weights2weights all_weights.pt or a .safetensors.")],
    bank: Path,
    base: Annotated[
        str | None,
        typer.Option(help="SD1.5-family base the LoRAs are for (default: SD1.5's layout)."),
    ] = None,
    alpha: Annotated[
        float, typer.Option(help="LoRA alpha of the rows (weights2weights: 27).")
    ] = 27.0,
    chunk: Annotated[int, typer.Option(min=1, help="Rows per atomic append.")] = 1024,
    limit: Annotated[int | None, typer.Option(min=1, help="Import only the first N rows.")] = None,
    names: Annotated[
        Path | None,
        typer.Option(help="Identity-image folder: row ids = its subfolder names, sorted."),
    ] = None,
    normalise: Annotated[bool, typer.Option(help="Refit BANK/normaliser.safetensors.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Import the weights2weights bank (rank-1 SD1.5 LoRAs in its own flat order) into BANK.

    A .pt file is a pickle: it is read only here, with torch.load(weights_only=True).
    """
    from lorasynth.bank.w2w import W2W_RANK, ids_from_folders
    from lorasynth.bank.w2w import import_w2w as run_import

    layout = _preset_layout("w2w", W2W_RANK, base) if base else None
    report = run_import(
        src,
        bank,
        layout=layout,
        alpha=alpha,
        chunk=chunk,
        limit=limit,
        normalise=normalise,
        names=ids_from_folders(names) if names else None,
    )
    _print_report(report, as_json, f"imported {report.imported}, already present {report.skipped}")


@app.command()
def conditions(
    bank: Path,
    photos: Annotated[Path, typer.Argument(help="Folder with one subfolder of photos per row id.")],
    embedder: Annotated[
        str, typer.Option(help="Face embedder (dlib, arcface-onnx, mini-*).")
    ] = "dlib",
    model_dir: Annotated[
        Path | None, typer.Option(help="Model folder for dlib / arcface-onnx.")
    ] = None,
    per_row: Annotated[int, typer.Option(min=1, help="Photos embedded per row (K).")] = 4,
) -> None:
    """Embed PHOTOS/<row id>/ for every bank row -> BANK/conditions.safetensors (for the prior)."""
    from lorasynth.bank.photo_conditions import build_photo_conditions
    from lorasynth.faces.embedders import load_face_embedder

    face_embedder = load_face_embedder(embedder, model_dir)
    out = build_photo_conditions(bank, photos, face_embedder, per_row)
    typer.echo(f"wrote {out} ({face_embedder.embedder_id})", err=True)


def _print_report(report, as_json: bool, counts: str) -> None:
    """The report as JSON on stdout (--json); `counts` and the bank's size on stderr."""
    if as_json:
        print(json.dumps(report.to_dict()))
    print(f"{counts}; bank has {report.rows} rows (layout {report.layout_hash})", file=sys.stderr)


def _preset_layout(preset: str | None, rank: int, base: str | None) -> LoraLayout | None:
    if base is None:
        return LoraLayout.sd15(preset, rank) if preset else None
    from lorasynth.generate import base_layout

    return base_layout(base, preset or "w2w", rank)


@app.command()
def info(
    bank: Path, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """Rows, layout hash, dtype, shards and ids of a bank."""
    summary = Bank(bank).info()
    if as_json:
        print(json.dumps(summary))
        return
    for key, value in summary.items():
        shown = f"{len(value)} ids" if key == "ids" else value
        print(f"{key:12} {shown}")


@app.command()
def verify(bank: Path) -> None:
    """Check every shard's sha256, shape and dtype; name any corrupted shard and exit 1."""
    problems = Bank(bank).verify()
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        raise typer.Exit(1)
    print(f"{bank}: ok", file=sys.stderr)


@app.command()
def export(
    bank: Path,
    row_id: Annotated[str, typer.Argument(metavar="ID")],
    dst: Path,
    to: Annotated[OutFormat, typer.Option(help="Output format.")] = OutFormat.diffusers,
) -> None:
    """Write one bank row back out as a LoRA file."""
    store = Bank(bank)
    lora = unflatten(store.vector(row_id), store.layout)
    write_lora(dst, lora, to=to.value, provenance={"bank_row": row_id})
    typer.echo(f"wrote {dst}", err=True)
