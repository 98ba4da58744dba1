"""Does a LoRA make images of its identity? The bank's acceptance test, and the preset probe's.

Images made with each identity's LoRA (prompts cycling through the evaluation prompts, so some
name a background) are judged by the domain's judge embedder (`mini-eval` for faces, never the
conditioning one) against reference renders that no LoRA was trained on: ID similarity, top-1
identification among the scored identities, and prompt fidelity on the images whose prompt
names a background. Issue 4's acceptance: top-1 >= 0.90 among 100 held-out identities with
their trained LoRAs, prompt fidelity >= 0.85.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lorasynth.batch_generate import generate_with_loras
from lorasynth.domains import get_domain, load_mini_embedder
from lorasynth.evaluate.metrics import (
    id_similarity,
    mean_ci95,
    reference_embedding,
    top1_identification,
)
from lorasynth.lora import LoraFile, LoraLayout
from lorasynth.models.defaults import IMAGE_GUIDANCE
from lorasynth.world.prompt_fidelity import background_of, prompt_fidelity

ACCEPTANCE_IDENTITIES = 100
REFERENCES = 8
GENERATION_SEED = 1000


class IdentityScorer:
    """Scores LoRAs (one per identity, in `seeds` order) against the identities' references."""

    def __init__(
        self,
        pipe,
        seeds: Sequence[int],
        prompts: Sequence[str],
        images_per_identity: int,
        domain: str = "faces",
        guidance: float = IMAGE_GUIDANCE,
        batch_size: int | None = None,
    ) -> None:
        from lorasynth.faces.mini import embed_images

        dom = get_domain(domain)
        self.pipe = pipe
        self.guidance = guidance
        # Images a UNet batch (default by the pipeline's device): a GPU wants hundreds.
        on_cpu = pipe.unet.device.type == "cpu"
        self.batch_size = batch_size or (64 if on_cpu else 1024)
        self.judge = load_mini_embedder(dom, dom.judge)
        self._embed = embed_images
        refs = np.stack(
            [
                np.stack(
                    [im for im, _ in dom.render_identity(s, REFERENCES, dom.eval_reference_photos)]
                )
                for s in seeds
            ]
        )
        self.references = reference_embedding(
            embed_images(self.judge, refs.reshape(-1, *refs.shape[2:])).reshape(
                len(seeds), REFERENCES, -1
            )
        )
        self.n = len(seeds)
        self.per_identity = images_per_identity
        self.prompts = [prompts[i % len(prompts)] for i in range(images_per_identity)] * self.n
        self.wanted = [background_of(p) for p in self.prompts]
        self.subject = torch.arange(self.n).repeat_interleave(images_per_identity)
        self.seeds = [GENERATION_SEED + i for i in range(len(self.prompts))]

    def score(self, loras: Sequence[LoraFile | None], layout: LoraLayout) -> dict:
        """{"id_sim", "ci95", "top1", "prompt_fidelity"?} of images made with the LoRAs."""
        if len(loras) != self.n:
            raise ValueError(f"need {self.n} LoRAs, one per identity, got {len(loras)}")
        per_image = [lora for lora in loras for _ in range(self.per_identity)]
        images = generate_with_loras(
            self.pipe,
            layout,
            per_image,
            self.prompts,
            self.seeds,
            guidance=self.guidance,
            batch_size=self.batch_size,
        )
        generated = self._embed(self.judge, images)
        sims = id_similarity(generated, self.references[self.subject])
        sim, ci = mean_ci95(sims.reshape(self.n, -1).mean(1).numpy())
        top1 = float(top1_identification(generated, self.subject, self.references).mean())
        scores = {"id_sim": sim, "ci95": ci, "top1": top1, "identities": self.n}
        named = [i for i, w in enumerate(self.wanted) if w]
        if named:
            scores["prompt_fidelity"] = prompt_fidelity(
                images[named], [self.wanted[i] for i in named]
            )
        return scores


def bank_acceptance(
    pipeline_dir: Path,
    bank_path: Path,
    identities: int = ACCEPTANCE_IDENTITIES,
    images_per_identity: int = 6,
    domain: str = "faces",
    device: str = "cpu",
) -> dict:
    """Acceptance numbers of a held-out bank's trained LoRAs (its first `identities` rows),
    next to the base model's on the same images, seeds and prompts."""
    from lorasynth.bank import Bank
    from lorasynth.evaluate.run import domain_prompts
    from lorasynth.lora import unflatten
    from lorasynth.world.identities import bank_id, identity_seeds
    from lorasynth.world.pipeline_io import load_pipeline

    bank = Bank(bank_path)
    identities = min(identities, len(bank))
    seeds = identity_seeds("heldout", identities)
    layout = bank.layout
    loras = [unflatten(bank.vector(bank_id(s)), layout) for s in seeds]
    pipe = load_pipeline(pipeline_dir).to(device)
    scorer = IdentityScorer(pipe, seeds, domain_prompts(domain), images_per_identity, domain)
    return {
        "trained": scorer.score(loras, layout),
        "base": scorer.score([None] * identities, layout),
        "images_per_identity": images_per_identity,
    }
