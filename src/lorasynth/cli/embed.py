"""`lorasynth embed PHOTO...`: one L2-normalised face embedding per photo, in order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def embed(
    photos: Annotated[list[Path], typer.Argument(help="PNG or JPEG photos of faces.")],
    embedder: Annotated[
        str,
        typer.Option(help="mini-arcface, mini-eval, or the path of an embedder .safetensors."),
    ] = "mini-arcface",
    as_json: Annotated[
        bool, typer.Option("--json", help='Print [{"path": ..., "embedding": [...]}].')
    ] = False,
) -> None:
    """Embed face photos (resized to the embedder's 32x32 input) with a mini-world embedder."""
    import numpy as np

    from lorasynth.faces.mini import embed_images, load_embedder, load_photo

    model = load_embedder(embedder)
    # Every photo is read before any is embedded: one bad path fails the whole call.
    images = np.stack([load_photo(p, model.config.image_size) for p in photos])
    embeddings = embed_images(model, images).tolist()
    if as_json:
        rows = [{"path": str(p), "embedding": e} for p, e in zip(photos, embeddings, strict=True)]
        typer.echo(json.dumps(rows))
        return
    for p, e in zip(photos, embeddings, strict=True):
        typer.echo(f"{p}\t" + " ".join(f"{v:.6f}" for v in e))
    typer.echo(f"{len(photos)} photo(s), {model.embedder_id}", err=True)


def register(app: typer.Typer) -> None:
    """Add `embed` to the main app."""
    app.command("embed")(embed)
