"""The separations the evaluation's honesty rests on (issue 6, "Honesty")."""

from __future__ import annotations

import numpy as np
import pytest

from lorasynth.world import identities as ids
from lorasynth.world.render import render_identity


def test_seed_ranges_are_disjoint():
    from lorasynth.world.train_embedders import EVAL_START, REGRESSOR_START
    from lorasynth.world.train_pipeline import FIRST_IDENTITY

    bank_train = set(ids.identity_seeds("train", 100_000))
    heldout = set(ids.identity_seeds("heldout", 100_000))
    validation = set(ids.validation_seeds(ids.VALIDATION_SIZE))
    assert not bank_train & heldout and not validation & (bank_train | heldout)
    # growing the held-out split never changes who is in it: its first seeds stay first
    assert ids.identity_seeds("heldout", 300)[:100] == ids.identity_seeds("heldout", 100)
    assert max(heldout) < ids.MODEL_TRAINING_START <= FIRST_IDENTITY
    assert min(EVAL_START, REGRESSOR_START) >= ids.MODEL_TRAINING_START


def test_photo_roles_use_different_renders():
    streams = [
        ids.LORA_TRAINING_PHOTOS,
        ids.CONDITION_PHOTOS,
        ids.EVAL_CONDITION_PHOTOS,
        ids.EVAL_REFERENCE_PHOTOS,
    ]
    assert len(set(streams)) == 4
    shots = [np.stack([im for im, _ in render_identity(100_000, 4, s)]) for s in streams]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not any(np.array_equal(a, b) for a in shots[i] for b in shots[j])


def test_evaluation_refuses_the_conditioning_embedder_as_judge(tmp_path):
    from lorasynth.errors import LorasynthError
    from lorasynth.evaluate.run import EvalConfig, EvalModels, Evaluation

    class Same:
        embedder_id = "mini-arcface/x"

    class Synth:
        embedder = Same()

    models = EvalModels(pipe=None, synth=Synth(), eval_embedder=Same(), heldout=None)
    with pytest.raises(LorasynthError, match="must not be the conditioning"):
        Evaluation(models, EvalConfig(identities=1), tmp_path)
