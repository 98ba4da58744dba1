"""The `lorasynth` command: sub-commands live in one module each; errors become one line, exit 2."""

from __future__ import annotations

import os
import sys

import typer

from lorasynth.errors import LorasynthError

app = typer.Typer(
    name="lorasynth",
    help="Zero-shot LoRA synthesis for Stable Diffusion, and the LoRA library around it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    # Imported here so `import lorasynth.cli` stays light and sub-apps may import app helpers.
    from lorasynth.cli import bank, embed, evaluate, lora, service, synth, train, world

    app.add_typer(lora.app, name="lora")
    app.add_typer(bank.app, name="bank")
    app.add_typer(world.app, name="world")
    app.add_typer(train.app, name="train")
    synth.register(app)
    embed.register(app)
    evaluate.register(app)
    service.register(app)


def fail(message: str) -> None:
    """Print the one-line error users see and exit with status 2."""
    first_line = " ".join(str(message).split())
    if first_line:  # empty for "no arguments: help shown", which needs no error line
        print(f"error: {first_line}", file=sys.stderr)
    raise SystemExit(2)


def _quiet_libraries() -> None:
    # Users see lorasynth's own progress and errors; library chatter (and any hub access) is off.
    for var, value in (
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("DIFFUSERS_VERBOSITY", "error"),
        ("HF_HUB_OFFLINE", "1"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        os.environ.setdefault(var, value)


def main() -> None:
    _quiet_libraries()
    _register()
    try:
        result = app(standalone_mode=False)
    except LorasynthError as exc:
        fail(str(exc))
    except (typer.Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:
        # Usage errors from typer's bundled click: duck-typed, since its module is private.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            fail(exc.format_message())
        raise
    # Without standalone mode, `typer.Exit(n)` comes back as the return value.
    if isinstance(result, int) and result:
        raise SystemExit(result)
