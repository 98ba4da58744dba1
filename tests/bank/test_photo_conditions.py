"""`bank conditions`: K photo embeddings per bank row from PHOTOS/<row id>/."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lorasynth.bank import Bank
from lorasynth.bank.conditions import CONDITIONS_FILE, ConditionTable
from lorasynth.lora import LoraLayout, flatten
from tests.conftest import assert_one_line_error, random_lora, run_cli


def _bank(tmp_path, tiny_unet, ids):
    layout = LoraLayout.from_unet(tiny_unet, "w2w", 1)
    bank = Bank.create(tmp_path / "bank", layout)
    bank.append(
        ids, torch.stack([flatten(random_lora(layout, seed=i), layout) for i in range(len(ids))])
    )
    return bank


def test_conditions_from_photo_folders(tmp_path, tiny_unet):
    bank = _bank(tmp_path, tiny_unet, ["b", "a"])
    rng = np.random.default_rng(0)
    for name, count in (("a", 3), ("b", 1)):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for k in range(count):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / "photos" / name / f"{k}.png"
            )
    run_cli(
        "bank", "conditions", bank.path, tmp_path / "photos", "--embedder", "mini-arcface",
        "--per-row", "2", check=True,
    )  # fmt: skip
    table = ConditionTable.load(bank.path / CONDITIONS_FILE)
    assert table.ids == ["b", "a"] and table.embeddings.shape[:2] == (2, 2)
    assert table.embedder_id
    # "b" has one photo: it is used for both of its K = 2 slots.
    assert (table.embeddings[0, 0] == table.embeddings[0, 1]).all()
    assert not (table.embeddings[1, 0] == table.embeddings[1, 1]).all()

    (tmp_path / "photos2" / "a").mkdir(parents=True)
    assert_one_line_error(
        run_cli(
            "bank", "conditions", bank.path, tmp_path / "photos2", "--embedder", "mini-arcface"
        ),
        "no photos for bank row",
    )


def test_mean_embeddings_follow_the_asked_order():
    emb = torch.nn.functional.normalize(torch.randn(3, 2, 4), dim=-1)
    table = ConditionTable(["a", "b", "c"], emb, "test-embedder")
    means = table.mean_embeddings_for(["c", "a"])
    assert torch.allclose(means, table.mean_embeddings()[[2, 0]])
    assert torch.allclose(means.norm(dim=-1), torch.ones(2))
