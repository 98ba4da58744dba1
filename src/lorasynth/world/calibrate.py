"""Choose a prior's strength (synthesis.with_strength) on validation subjects.

A prior's LoRAs for unseen subjects come out short of a real LoRA's deviation from the bank
mean (v2 faces: 0.31 of it), and identity needs the deviation, though not more of it than a
LoRA has. The strength that scores best is chosen on validation subjects
(world.identities.validation_seeds: seeds the held-out split steps over, with no bank LoRA),
so the evaluation stays unbiased.
Each candidate is judged like the evaluation judges (one condition photo, the evaluation
prompts, the domain's judge embedder). The chosen value travels in the shipped prior's
metadata (STRENGTH_KEY), where `Prior.load` reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lorasynth.domains import get_domain
from lorasynth.lora import unflatten
from lorasynth.models.defaults import PRIOR_GUIDANCE, PRIOR_STEPS

STRENGTHS = (0.6, 0.8, 1.0, 1.2)
IMAGES_PER_SUBJECT = 4


def prior_sampler(synth, prior) -> Callable[[torch.Tensor], torch.Tensor]:
    """Vectors of `prior` (a synthesis.Prior on synth's bank) for condition embeddings, as
    sampled at the default steps and guidance (no strength applied): strength_scores' `make`."""

    def sample(cond: torch.Tensor) -> torch.Tensor:
        normalised = synth.sample_prior(prior, cond, PRIOR_STEPS, PRIOR_GUIDANCE, seed=0)
        return synth.normaliser.decode(normalised)

    return sample


def strength_scores(
    synth,
    make: Callable[[torch.Tensor], torch.Tensor],
    pipe,
    seeds: Sequence[int],
    strengths: Sequence[float] = STRENGTHS,
    domain: str = "faces",
    images_per_subject: int = IMAGES_PER_SUBJECT,
) -> dict:
    """{"scores": {"as sampled"|str(strength): {"id_sim", "top1", ...}}, "chosen": float|None,
    "norm_ratio": made deviation / the bank's RMS deviation} of the vectors `make` returns for
    condition embeddings (B, E), one photo per subject. The chosen strength maximises mean ID
    similarity ("as sampled" included: None when nothing beats it)."""
    from lorasynth.evaluate.run import domain_prompts
    from lorasynth.synthesis import with_strength
    from lorasynth.world.acceptance import IdentityScorer

    dom = get_domain(domain)
    scorer = IdentityScorer(pipe, seeds, domain_prompts(domain), images_per_subject, domain)
    photos = [[im for im, _ in dom.render_identity(s, 1, dom.eval_condition_photos)] for s in seeds]
    sampled = make(torch.stack([synth.embed(p) for p in photos]))
    layout = synth.layout
    rms = float(synth.normaliser.std.double().norm())
    ratio = float((sampled - synth.normaliser.mean).norm(dim=1).mean()) / rms

    def score(vectors: torch.Tensor) -> dict:
        return scorer.score([unflatten(v, layout) for v in vectors], layout)

    scores = {"as sampled": score(sampled)}
    for strength in strengths:
        scores[str(strength)] = score(with_strength(sampled, synth.normaliser, strength))
    best = max(scores, key=lambda k: scores[k]["id_sim"])
    return {
        "scores": scores,
        "chosen": None if best == "as sampled" else float(best),
        "norm_ratio": ratio,
        "subjects": len(seeds),
        "images_per_subject": images_per_subject,
    }
