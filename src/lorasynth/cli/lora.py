"""`lorasynth lora ...`: inspect, convert and canonicalize single LoRA files."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lorasynth.lora import flatten, inspect_lora, read_lora, unflatten, write_lora
from lorasynth.lora.layout import LoraLayout
from lorasynth.lora.safetensors_io import load_tensors, save_tensors

app = typer.Typer(help="Read, convert and canonicalize LoRA files.", no_args_is_help=True)


class OutFormat(StrEnum):
    diffusers = "diffusers"
    kohya = "kohya"


AdapterConfig = Annotated[
    Path | None,
    typer.Option(help="PEFT adapter_config.json (default: the one beside the file, if any)."),
]


@app.command()
def inspect(
    file: Path,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    adapter_config: AdapterConfig = None,
) -> None:
    """Format, architecture, modules, rank, alpha, parameter count and layout hash of a LoRA."""
    summary = inspect_lora(read_lora(file, adapter_config=adapter_config))
    if as_json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:13} {value}")


@app.command()
def convert(
    src: Path,
    dst: Path,
    to: Annotated[OutFormat, typer.Option(help="Output format.")],
    title: Annotated[str | None, typer.Option(help="modelspec.title (default: file name).")] = None,
    adapter_config: AdapterConfig = None,
) -> None:
    """Rewrite a LoRA (diffusers, PEFT or kohya) as diffusers or kohya; the update is unchanged."""
    lora = read_lora(src, adapter_config=adapter_config)
    write_lora(dst, lora, to=to.value, title=title)
    typer.echo(f"wrote {dst} ({to.value}, {len(lora.modules)} modules)", err=True)


@app.command()
def canonicalize(src: Path, dst: Path, adapter_config: AdapterConfig = None) -> None:
    """Write the canonical vector of a LoRA: tensor `vector`, metadata `layout_hash`, `layout`."""
    lora = read_lora(src, adapter_config=adapter_config)
    layout = lora.layout()
    vector = flatten(lora, layout)
    meta = {"layout_hash": layout.hash, "layout": layout.to_json(), "source": src.name}
    save_tensors(dst, {"vector": vector}, meta)
    typer.echo(f"wrote {dst} ({layout.describe()})", err=True)


@app.command()
def uncanonicalize(
    src: Path,
    dst: Path,
    to: Annotated[OutFormat, typer.Option(help="Output format.")] = OutFormat.diffusers,
) -> None:
    """Turn a canonical vector file (from `canonicalize`) back into a LoRA file."""
    tensors, meta = load_tensors(src)
    if "vector" not in tensors or "layout" not in meta:
        from lorasynth.errors import LorasynthError

        raise LorasynthError(
            f"{src}: not a canonical vector file (needs tensor 'vector' and layout)"
        )
    layout = LoraLayout.from_json(meta["layout"])
    write_lora(dst, unflatten(tensors["vector"], layout), to=to.value)
    typer.echo(f"wrote {dst} ({to.value}, {layout.describe()})", err=True)
