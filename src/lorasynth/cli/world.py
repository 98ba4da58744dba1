"""`lorasynth world ...`: the mini-world."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from lorasynth.atomic import write_json_atomic
from lorasynth.errors import LorasynthError

app = typer.Typer(
    help="The mini-world: render faces, build and verify the shipped models.",
    no_args_is_help=True,
)

MAX_IMAGES = 100_000
DomainOpt = Annotated[str, typer.Option(help="Subject domain: faces or products.")]


@app.callback()
def _world() -> None:
    """The mini-world: render faces, build and verify the shipped models."""
    # A callback keeps `world` a command group even while it has a single command.


@app.command()
def render(
    identity: Annotated[int, typer.Option(help="Identity seed: any integer.")],
    out: Annotated[Path, typer.Option(help="Output folder (created; must be empty).")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 8,
    size: Annotated[int, typer.Option(help="Image side in pixels (16 to 1024).")] = 32,
    nuisance_seed: Annotated[int, typer.Option(help="Seed of the nuisance sequence.")] = 0,
    subject: Annotated[
        str | None,
        typer.Option(help="Subject phrase that starts every caption (default: the domain's)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Write into a non-empty folder.")] = False,
    domain: DomainOpt = "faces",
) -> None:
    """Render N photos of one identity: OUT/0000.png ... and OUT/identity.json."""
    from PIL import Image
    from tqdm import tqdm

    from lorasynth.domains import get_domain
    from lorasynth.world.render_common import MAX_SIZE, MIN_SIZE

    dom = get_domain(domain)
    subject = subject or dom.generic_prompt

    if not 1 <= n <= MAX_IMAGES:
        raise LorasynthError(f"--n must be between 1 and {MAX_IMAGES}, got {n}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise LorasynthError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    if out.exists() and not out.is_dir():
        raise LorasynthError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise LorasynthError(f"--out {out} is not empty; choose a new folder or pass --force")
    out.mkdir(parents=True, exist_ok=True)

    width = max(4, len(str(n - 1)))
    images = []
    shots = dom.iter_identity(identity, n, nuisance_seed, size)
    progress = tqdm(shots, total=n, desc="render", unit="img", disable=n < 1000)
    for i, (image, nuisance) in enumerate(progress):
        name = f"{i:0{width}d}.png"
        Image.fromarray(image).save(out / name, format="PNG")
        images.append(
            {
                "file": name,
                "nuisance": nuisance.to_dict(),
                "caption": dom.caption(nuisance, subject=subject),
            }
        )
    record = {
        **({} if dom.name == "faces" else {"domain": dom.name}),
        "identity": identity,
        "nuisance_seed": nuisance_seed,
        "size": size,
        "attributes": dom.identity_attributes(identity).to_dict(),
        "images": images,
    }
    # Written last and atomically: a folder with identity.json is a complete one.
    write_json_atomic(out / "identity.json", record)
    typer.echo(f"wrote {n} image(s) of identity {identity} to {out}", err=True)


@app.command()
def build(
    stage: Annotated[
        str | None,
        typer.Option(
            help="One stage: embedders, vae, unet, bank, heldout, conditions, synthesis, "
            "ablations (default: all, in order)."
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from checkpoints in build/.")] = True,
    domain: DomainOpt = "faces",
    device: Annotated[
        str,
        typer.Option(help="Where the UNet and bank LoRAs train: cpu or a GPU, e.g. cuda."),
    ] = "cpu",
) -> None:
    """Train the mini-world's shipped models (hours on 2 cores; resumable stage by stage)."""
    from lorasynth.world.build import build as run_build

    results = run_build(stage, resume=resume, domain=domain, device=device)
    typer.echo(f"built stages: {', '.join(results)}", err=True)


@app.command()
def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    domain: DomainOpt = "faces",
) -> None:
    """What the shipped mini-world holds: identities, layout, embedders, sizes, measured numbers."""
    import json

    from lorasynth.world.build import world_info

    summary = world_info(domain)
    if as_json:
        print(json.dumps(summary))
        return
    for key, value in summary.items():
        if key != "measured":
            print(f"{key:20} {value}")


@app.command()
def verify(
    domain: Annotated[
        str | None, typer.Option(help="Check one domain only (default: every domain).")
    ] = None,
) -> None:
    """Check every shipped mini-world file against the manifest's sha256 and the size budget."""
    from lorasynth.domains import DOMAINS, get_domain
    from lorasynth.world.assets import verify_assets

    domains = [get_domain(domain)] if domain else list(DOMAINS.values())
    problems = [p for d in domains for p in verify_assets(d.root())]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        raise typer.Exit(1)
    print("mini-world: ok", file=sys.stderr)
