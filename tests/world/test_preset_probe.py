from __future__ import annotations

import argparse

import pytest

from lorasynth.errors import LorasynthError
from lorasynth.world.identities import VALIDATION_START
from lorasynth.world.preset_probe import Recipe, _recipes, probe_seeds


def test_recipe_from_dict_sorts_steps_and_trains_the_longest():
    recipe = Recipe.from_dict(
        {"preset": "attn-ff-conv", "rank": 1, "steps": [1000, 300, 300], "samples_per_subject": 8}
    )
    assert recipe.steps == (300, 1000)
    config = recipe.bank_config()
    assert config.lora.steps == 1000 and config.lora.samples_per_subject == 8
    assert recipe.bank_config(300).lora.steps == 300
    assert config.images_per_identity == 8 and config.lora.preset == "attn-ff-conv"


def test_recipe_labels_name_what_differs_from_the_default():
    assert Recipe("w2w", 1).label(200) == "w2w r1"
    sweep = Recipe("attn-ff-conv", 1, (300, 600), samples_per_subject=8, images_per_identity=32)
    assert sweep.label(600) == "attn-ff-conv r1 lr 0.003 8/step 32 renders @600"


def test_recipe_needs_positive_steps():
    with pytest.raises(LorasynthError, match="positive step"):
        Recipe("attn", 1, (0,))


def _args(**kw):
    values = {"recipes": None, "candidates": "w2w:1,attn:4", "steps": 150, "lr": 1e-2}
    return argparse.Namespace(**{**values, **kw})


def test_recipes_from_candidates_or_json(tmp_path):
    assert _recipes(_args()) == [Recipe("w2w", 1, (150,), 1e-2), Recipe("attn", 4, (150,), 1e-2)]
    path = tmp_path / "r.json"
    path.write_text('[{"preset": "attn", "rank": 2, "steps": 5}]')
    assert _recipes(_args(recipes=str(path))) == [Recipe("attn", 2, (5,))]
    with pytest.raises(LorasynthError, match="--recipes"):
        _recipes(_args(recipes='[{"preset": "attn"}]'))


def test_validation_probes_never_touch_evaluated_identities():
    assert probe_seeds("validation", 3) == [VALIDATION_START + i for i in range(3)]
