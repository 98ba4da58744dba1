"""Loading a (mini-world or real) Stable Diffusion pipeline from a local folder, offline."""

from __future__ import annotations

import os
from pathlib import Path

from lorasynth.errors import LorasynthError


def load_pipeline(path: str | os.PathLike[str]):
    """A diffusers StableDiffusionPipeline saved with save_pretrained; never touches a hub."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise LorasynthError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
    pipe = StableDiffusionPipeline.from_pretrained(
        str(path),
        local_files_only=True,
        use_safetensors=True,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
