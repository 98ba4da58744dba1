"""`lorasynth evaluate`: the paper's comparison on held-out mini-world identities."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer


def evaluate(
    out: Annotated[Path, typer.Option(help="Output folder: results.json, report.md, plots/.")],
    identities: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=300,
            help="Held-out identities (200+ for the reported table). Default: 200, or all of a "
            "domain's held-out subjects when it has fewer (products: 100).",
        ),
    ] = None,
    methods: Annotated[
        str,
        typer.Option(
            help="Comma-separated: base,nearest,lincomb,ridge,kernel,optimize,diffusion,trained "
            "(diffusion variants follow diffusion)."
        ),
    ] = "base,nearest,lincomb,ridge,kernel,optimize,diffusion,trained",
    seed: Annotated[int, typer.Option(help="Seed of prior sampling and image noise.")] = 0,
    ablations: Annotated[
        bool, typer.Option(help="Also run the 4-photo setting, sweeps and sanity checks.")
    ] = True,
    multi_photo_methods: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated methods the 4-photo setting repeats (default: every "
            "synthesis method of the run; e.g. leave out optimize, seconds a subject)."
        ),
    ] = None,
    domain: Annotated[
        str,
        typer.Option(
            help="faces, products, or all: each built domain into OUT/<domain>/ and one "
            "OUT/report.md with every domain's table (a domain not built is said, not fatal)."
        ),
    ] = "faces",
) -> None:
    """Score every method (ID similarity, fidelity, top-1, attributes, prompts, Frechet, time, bytes)."""
    from lorasynth.domains import get_domain
    from lorasynth.evaluate.run import (
        EvalConfig,
        EvalModels,
        available_identities,
        evaluate_domains,
    )
    from lorasynth.evaluate.run import evaluate as run_evaluation

    config = EvalConfig(
        identities=identities or 200,
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        seed=seed,
        ablations=ablations,
        domain="faces" if domain == "all" else get_domain(domain).name,
        multi_photo_methods=None
        if multi_photo_methods is None
        else tuple(m.strip() for m in multi_photo_methods.split(",") if m.strip()),
    )
    if domain == "all":
        outcome = evaluate_domains(out, config)
        for name, results in outcome.items():
            if isinstance(results, str):
                typer.echo(f"{name}: not evaluated: {results}", err=True)
            else:
                typer.echo(
                    f"{name}: {results['n_identities']} identities in "
                    f"{results['seconds']:,.0f} s; report: {out / name / 'report.md'}",
                    err=True,
                )
        typer.echo(f"every domain's table: {out / 'report.md'}", err=True)
        return
    models = EvalModels.shipped(config.domain)
    if identities is None:
        config = replace(config, identities=available_identities(models, config.identities))
    results = run_evaluation(out, config, models)
    typer.echo(
        f"evaluated {config.identities} {config.domain} identities in {results['seconds']:,.0f} s; "
        f"report: {out / 'report.md'}",
        err=True,
    )


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    app.command("demo")(demo)


def demo(
    out: Annotated[Path, typer.Option(help="Output folder (report.md, grid.png).")] = Path("demo"),
    identities: Annotated[
        int,
        typer.Option(
            min=1, max=50, help="Held-out faces to show (other built domains: at most 4 subjects)."
        ),
    ] = 8,
    foundation: Annotated[bool, typer.Option(help="Show the foundation demo instead.")] = False,
) -> None:
    """The whole idea in minutes: LoRAs from one photo, images, a table and a picture, for
    every built domain (faces, then products); a domain not built is one line saying how."""
    from lorasynth.demo import run

    run(out, identities=identities, foundation=foundation)
