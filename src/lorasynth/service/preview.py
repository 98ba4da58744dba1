"""Preview images of a synthesized LoRA on the base pipeline, for reviewers and the ID gate."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

log = logging.getLogger("lorasynth.service.preview")


class PipelinePreviewer:
    """`previewer(lora_path) -> [PIL images]`; loads the pipeline on first use. When it cannot
    be loaded (no mini-world pipeline built yet) previews are skipped, not fatal."""

    def __init__(
        self,
        base: str = "mini",
        prompt: str | None = None,
        n: int = 2,
        steps: int = 20,
        domain: str | None = None,
    ) -> None:
        from lorasynth.domains import get_domain

        dom = get_domain(domain)
        # As Synthesizer.load: the mini base of a domain is its own pipeline.
        if str(base) == "mini" and dom.asset_subdir:
            base = str(dom.root() / "pipeline")
        self.base, self.n, self.steps = base, n, steps
        self.prompt = prompt or dom.subject_prompt
        self._pipe = None
        self._failed: str | None = None
        self._lock = threading.Lock()  # one pipeline, one LoRA loaded at a time

    def __call__(self, lora_path: Path) -> list:
        from lorasynth.generate import generate_images, load_base

        with self._lock:
            if self._pipe is None and self._failed is None:
                try:
                    self._pipe = load_base(self.base)
                except Exception as exc:
                    self._failed = f"{type(exc).__name__}: {exc}"
                    log.warning("previews disabled", extra={"reason": self._failed})
            if self._pipe is None:
                return []
            return generate_images(
                self._pipe, self.prompt, self.n, seed=0, steps=self.steps, lora=lora_path
            )
