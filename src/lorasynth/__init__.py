"""lorasynth: zero-shot LoRA synthesis for diffusion models, and the LoRA library around it.

>>> import lorasynth
>>> result = lorasynth.synthesize(["me.png"], out="me.safetensors")  # shipped models
>>> print(result.time_ms, result.path)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lorasynth.models.defaults import PRIOR_GUIDANCE, PRIOR_STEPS

if TYPE_CHECKING:
    from lorasynth.synthesis import Photo, SynthesisResult, Synthesizer

__version__ = "0.1.0"
_default: Synthesizer | None = None


def synthesize(
    photos: Sequence[Photo],
    out: str | os.PathLike[str] | None = None,
    method: str = "diffusion",
    fmt: str = "diffusers",
    seed: int = 0,
    guidance: float = PRIOR_GUIDANCE,
    steps: int = PRIOR_STEPS,
    synthesizer: Synthesizer | None = None,
    temperature: float = 1.0,
) -> SynthesisResult:
    """Photo(s) (paths, bytes or RGB arrays) -> LoRA; mirrors `lorasynth synthesize`.

    Without `synthesizer`, the shipped mini-world models are loaded once and reused.
    """
    global _default
    if synthesizer is None:
        if _default is None:
            from lorasynth.synthesis import Synthesizer

            _default = Synthesizer.load()
        synthesizer = _default
    return synthesizer.synthesize(
        photos, method, seed, guidance, steps, out=out, fmt=fmt, temperature=temperature
    )
