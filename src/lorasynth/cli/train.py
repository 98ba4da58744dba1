"""`lorasynth train vae|prior`: fit the synthesis models on a bank (resumable, accelerate-ready).

Every option maps to a field of VAETrainConfig / PriorTrainConfig; the full config is written to
OUT/config.json and checked on resume.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer

from lorasynth.train import PriorTrainConfig, VAETrainConfig

app = typer.Typer(help="Train the LoRA VAE and the diffusion prior.", no_args_is_help=True)

Resume = Annotated[bool, typer.Option(help="Continue from OUT/state.safetensors if present.")]
StopAt = Annotated[
    int | None, typer.Option(help="Checkpoint and stop at this step (time-boxed runs).")
]
Overrides = Annotated[
    list[str] | None, typer.Option("--set", help="Config field=value (repeatable).")
]
BaseOpt = Annotated[
    str | None,
    typer.Option(help="Base model the bank's LoRAs are for: checked to fit before training."),
]


DomainOpt = Annotated[
    str | None,
    typer.Option(help="Expected subject domain (faces, products): the bank must hold it."),
]


def _check_domain(bank: Path, domain: str | None) -> None:
    """Refuse, before training, a bank of another domain than the one asked for."""
    if domain is not None:
        from lorasynth.bank import Bank
        from lorasynth.domains import check_same_domain, get_domain

        check_same_domain(f"bank {bank}", Bank(bank).domain, "--domain", get_domain(domain).name)


def _check_base(bank: Path, base: str | None) -> None:
    """Fail in seconds, not after a long run, when the bank's LoRAs do not fit the base."""
    if base is not None:
        from lorasynth.bank import Bank
        from lorasynth.generate import check_fits_base

        check_fits_base(Bank(bank).layout, base)


def _config(cls, overrides: list[str] | None):
    types = {f.name: f.type for f in fields(cls)}
    values = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or key not in types:
            from lorasynth.errors import LorasynthError

            raise LorasynthError(
                f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(types)}"
            )
        kind = {"int": int, "float": float, "str": str}[str(types[key])]
        values[key] = kind(raw)
    return cls(**values)


@app.command()
def vae(
    bank: Path,
    out: Annotated[Path, typer.Option(help="Run folder.")],
    overrides: Overrides = None,
    resume: Resume = True,
    stop_at: StopAt = None,
    base: BaseOpt = None,
    domain: DomainOpt = None,
) -> None:
    """Fit the LoRA VAE on BANK's normalised vectors -> OUT/lora-vae.safetensors."""
    from lorasynth.train import train_vae

    _check_base(bank, base)
    _check_domain(bank, domain)

    result = train_vae(
        bank, out, _config(VAETrainConfig, overrides), resume=resume, stop_at=stop_at
    )
    typer.echo(
        f"wrote {result}" if result else f"checkpointed in {out}; rerun to continue", err=True
    )


@app.command()
def prior(
    bank: Path,
    out: Annotated[Path, typer.Option(help="Run folder.")],
    conditions: Annotated[
        Path | None, typer.Option(help="Condition table (default: BANK/conditions.safetensors).")
    ] = None,
    vae_file: Annotated[
        Path | None, typer.Option("--vae", help="LoRA VAE for representation=vae.")
    ] = None,
    overrides: Overrides = None,
    resume: Resume = True,
    stop_at: StopAt = None,
    base: BaseOpt = None,
    domain: DomainOpt = None,
) -> None:
    """Fit the conditional diffusion prior -> OUT/prior.safetensors (EMA weights)."""
    from lorasynth.bank.conditions import CONDITIONS_FILE
    from lorasynth.train import train_prior

    _check_base(bank, base)
    _check_domain(bank, domain)

    config = _config(PriorTrainConfig, overrides)
    result = train_prior(
        bank,
        conditions or bank / CONDITIONS_FILE,
        out,
        config,
        vae_path=vae_file,
        resume=resume,
        stop_at=stop_at,
    )
    typer.echo(
        f"wrote {result}" if result else f"checkpointed in {out}; rerun to continue", err=True
    )
