"""Command-line options and loaders that several commands share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from lorasynth.synthesis import Synthesizer

PriorOpt = Annotated[Path | None, typer.Option(help="Prior file (default: shipped).")]
ModelDirOpt = Annotated[
    Path | None, typer.Option(help="Embedder model folder (see `lorasynth embed --help`).")
]


def synthesizer_loader(
    bank: Path | None,
    prior: Path | None,
    vae: Path | None,
    embedder: str | None,
    base: str,
    model_dir: Path | None,
    domain: str | None,
) -> Callable[[], Synthesizer]:
    """A function that loads the Synthesizer these options name (torch is imported on call).

    The parameters are `Synthesizer.load`'s, in its order.
    """

    def load() -> Synthesizer:
        from lorasynth.synthesis import Synthesizer

        return Synthesizer.load(
            bank=bank,
            prior=prior,
            vae=vae,
            embedder=embedder,
            base=base,
            model_dir=model_dir,
            domain=domain,
        )

    return load
