"""`lorasynth embed PHOTO...`: one L2-normalised subject embedding per photo, in order.

With `--domain products` the default embedder is that domain's conditioning embedder
(`mini-style`, from assets/mini-world/products/embedders/); faces stay the default domain.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def embed(
    photos: Annotated[
        list[Path], typer.Argument(help="Face photos (JPEG, PNG, WebP or BMP; type from content).")
    ],
    embedder: Annotated[
        str | None,
        typer.Option(
            help="Default: the domain's conditioning embedder (faces: mini-arcface, products: "
            "mini-style). Also mini-eval / mini-style-eval (the judges), dlib (real photos), "
            "arcface-onnx (with --model-dir), or a mini embedder .safetensors path."
        ),
    ] = None,
    model_dir: Annotated[
        Path | None,
        typer.Option(
            help="Model folder: an insightface folder for arcface-onnx (e.g. buffalo_l); "
            "dlib's .dat files for dlib (default: the face_recognition_models package)."
        ),
    ] = None,
    face_index: Annotated[
        int | None,
        typer.Option(min=0, help="Which face of each photo, largest first (default: 0)."),
    ] = None,
    mean: Annotated[
        bool, typer.Option("--mean", help="One L2-normalised mean embedding of all photos.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help='Print [{"path", "embedding", "faces_found", "face", "blur", "warnings"}], '
            'or with --mean {"embedder_id", "paths", "embedding"}.',
        ),
    ] = False,
    domain: Annotated[str, typer.Option(help="Subject domain: faces or products.")] = "faces",
) -> None:
    """Embed the subject of each photo (faces: detected and aligned; several faces: the largest)."""
    from lorasynth.faces import mean_embedding

    model = _load(domain, embedder, model_dir)
    # Every photo is read and its face found before the result is printed: one bad photo fails
    # the whole call.
    results = model.analyse(photos, face_index)
    for result in results:
        for note in result.warnings:
            print(f"warning: {note}", file=sys.stderr)
    if mean:
        vector = mean_embedding([r.embedding for r in results]).tolist()
        if as_json:
            paths = [str(p) for p in photos]
            typer.echo(
                json.dumps({"embedder_id": model.embedder_id, "paths": paths, "embedding": vector})
            )
        else:
            typer.echo(f"mean of {len(photos)}\t" + " ".join(f"{v:.6f}" for v in vector))
    elif as_json:
        rows = [{**r.to_json(), "embedder_id": model.embedder_id} for r in results]
        typer.echo(json.dumps(rows))
    else:
        for result in results:
            typer.echo(f"{result.photo}\t" + " ".join(f"{v:.6f}" for v in result.embedding))
    typer.echo(f"{len(photos)} photo(s), {model.embedder_id}", err=True)


def _load(domain: str, embedder: str | None, model_dir: Path | None):
    """The embedder by name in `domain` (a domain's bare mini names come from its folder);
    one trained for another domain is refused."""
    from lorasynth.domains import get_domain
    from lorasynth.faces import load_face_embedder

    dom = get_domain(domain)
    name = embedder or dom.conditioner
    if dom.asset_subdir and name in dom.embedders:
        name = str(dom.built_embedder_path(name))
    model = load_face_embedder(name, model_dir)
    dom.check_embedder(model.embedder_id, "--domain")
    return model


def register(app: typer.Typer) -> None:
    """Add `embed` to the main app."""
    app.command("embed")(embed)
