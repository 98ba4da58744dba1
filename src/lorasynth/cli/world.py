"""`lorasynth world ...`: the mini-world."""

import typer

app = typer.Typer(
    help="The mini-world: render faces, build and verify the shipped models.", no_args_is_help=True
)
