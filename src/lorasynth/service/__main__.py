"""`python -m lorasynth.service serve|admin|retention ...`: the `lorasynth` command with the
service commands registered (also before `lorasynth.cli` registers them itself)."""

import lorasynth.cli as cli
from lorasynth.cli.service import register

_register_others = cli._register


def _register_all() -> None:
    _register_others()
    if not any(c.name == "serve" for c in cli.app.registered_commands):
        register(cli.app)


cli._register = _register_all
cli.main()
