"""`lorasynth synthesize` and `lorasynth generate`: photo -> LoRA file, LoRA file -> images."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lorasynth.cli.lora import OutFormat
from lorasynth.cli.options import ModelDirOpt, PriorOpt, synthesizer_loader
from lorasynth.models.defaults import PRIOR_GUIDANCE, PRIOR_STEPS

BASE_HELP = (
    "Base model: 'mini', a diffusers SD1.5-family folder, or a single-file SD1.5 .safetensors."
)


class Method(StrEnum):
    diffusion = "diffusion"
    nearest = "nearest"
    lincomb = "lincomb"
    ridge = "ridge"
    kernel = "kernel"
    optimize = "optimize"
    trained = "trained"


def synthesize(
    photos: Annotated[list[Path], typer.Argument(help="One or more photos of the subject.")],
    out: Annotated[Path, typer.Option(help="LoRA file to write (.safetensors).")],
    method: Annotated[Method, typer.Option(help="How to make the LoRA.")] = Method.diffusion,
    fmt: Annotated[
        OutFormat, typer.Option("--format", help="Output format.")
    ] = OutFormat.diffusers,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    guidance: Annotated[
        float, typer.Option(help="Classifier-free guidance scale of the prior.")
    ] = PRIOR_GUIDANCE,
    steps: Annotated[int, typer.Option(min=1, help="Prior sampling steps.")] = PRIOR_STEPS,
    temperature: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Scale of the prior's starting noise: below 1 nearer the likeliest LoRA for the "
            "photo (0: one LoRA per photo, whatever the seed).",
        ),
    ] = 1.0,
    bank: Annotated[
        Path | None, typer.Option(help="Bank (default: the shipped mini-world).")
    ] = None,
    prior: PriorOpt = None,
    vae: Annotated[Path | None, typer.Option(help="LoRA VAE file (default: shipped).")] = None,
    embedder: Annotated[
        str | None,
        typer.Option(
            help="Conditioning embedder (mini-arcface, mini-eval, mini-style, dlib, arcface-onnx, "
            "clip-vision; default: the domain's); it must be the one the bank and prior were "
            "built with."
        ),
    ] = None,
    model_dir: ModelDirOpt = None,
    face_index: Annotated[
        int | None, typer.Option(min=0, help="Which face of each photo, largest first.")
    ] = None,
    base: Annotated[str, typer.Option(help=BASE_HELP)] = "mini",
    domain: Annotated[
        str | None,
        typer.Option(help="Subject domain: faces or products (default: the bank's, else faces)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print method, seed, time_ms, layout_hash.")
    ] = False,
) -> None:
    """Make a subject's LoRA from photo(s) in milliseconds, with no training."""
    import warnings

    from lorasynth.faces import FaceWarning

    synth = synthesizer_loader(bank, prior, vae, embedder, base, model_dir, domain)()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FaceWarning)
        result = synth.synthesize(
            photos,
            method.value,
            seed,
            guidance,
            steps,
            out=out,
            fmt=fmt.value,
            face_index=face_index,
            temperature=temperature,
        )
    for warning in caught:
        if issubclass(warning.category, FaceWarning):
            typer.echo(f"warning: {warning.message}", err=True)
        else:
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    if as_json:
        print(json.dumps(result.to_json()))
    else:
        typer.echo(f"wrote {out} ({method.value}, {result.time_ms:.1f} ms)", err=True)


def generate(
    lora: Annotated[
        Path | None, typer.Option(help="LoRA file to apply (none: the base model).")
    ] = None,
    prompt: Annotated[str, typer.Option(help="Text prompt.")] = "a photo of sks person",
    n: Annotated[int, typer.Option("--n", min=1, max=1000, help="Number of images.")] = 4,
    out: Annotated[Path, typer.Option(help="Output folder for PNGs.")] = Path("generated"),
    base: Annotated[str, typer.Option(help=BASE_HELP)] = "mini",
    seed: Annotated[int, typer.Option(help="Seed of the first image; image i uses seed + i.")] = 0,
    steps: Annotated[int, typer.Option(min=1, help="Denoising steps.")] = 25,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 3.0,
    scale: Annotated[
        int, typer.Option(min=1, max=16, help="Also save copies enlarged this many times.")
    ] = 1,
    device: Annotated[
        str, typer.Option(help="Where the pipeline runs: cpu, or a GPU such as cuda.")
    ] = "cpu",
) -> None:
    """Generate images with a LoRA on the base pipeline (PNG files in --out)."""
    from lorasynth.devices import checked_device
    from lorasynth.generate import generate_images, load_base
    from lorasynth.lora import read_lora

    checked_device(device)
    if lora is not None:
        read_lora(lora)  # fail fast, before loading the pipeline
    # Seeds draw on a CPU generator whatever the device, so an image's seed names its noise.
    pipe = load_base(base).to(device)
    images = generate_images(pipe, prompt, n, seed=seed, steps=steps, guidance=guidance, lora=lora)
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(out / f"{i:04d}.png")
        if scale > 1:
            image.resize((image.width * scale, image.height * scale), 0).save(
                out / f"{i:04d}-x{scale}.png"
            )
    typer.echo(f"wrote {len(images)} image(s) to {out}", err=True)


def register(app: typer.Typer) -> None:
    app.command("synthesize")(synthesize)
    app.command("generate")(generate)
