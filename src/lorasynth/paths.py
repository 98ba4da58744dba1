"""Where shipped assets and build scratch live, resolved from the package, never from the cwd."""

from __future__ import annotations

import os
from pathlib import Path

import lorasynth


def repo_root() -> Path:
    """The checkout this package runs from (src layout: <root>/src/lorasynth)."""
    return Path(lorasynth.__file__).resolve().parents[2]


def assets_dir() -> Path:
    """Shipped weights; LORASYNTH_ASSETS overrides (e.g. an installed copy elsewhere)."""
    override = os.environ.get("LORASYNTH_ASSETS")
    return Path(override) if override else repo_root() / "assets"


def mini_world_dir() -> Path:
    return assets_dir() / "mini-world"


def build_dir() -> Path:
    """Intermediate checkpoints and logs of long builds (git-ignored); LORASYNTH_BUILD overrides."""
    override = os.environ.get("LORASYNTH_BUILD")
    return Path(override) if override else repo_root() / "build"
