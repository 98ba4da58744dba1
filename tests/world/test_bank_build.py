from __future__ import annotations

import json

from lorasynth.bank.ingest import ingest
from lorasynth.lora import read_lora
from lorasynth.world.bank_build import BankBuildConfig, build_split, lora_path
from lorasynth.world.identities import identity_seeds
from lorasynth.world.lora_trainer import LoraTrainConfig


def test_build_split_writes_resumable_loras(tiny_pipeline, tmp_path):
    pipe_dir = tmp_path / "pipe"
    tiny_pipeline.save_pretrained(str(pipe_dir))
    config = BankBuildConfig(
        images_per_identity=2,
        chunk=2,
        image_size=16,
        lora=LoraTrainConfig(preset="w2w", rank=1, steps=2, samples_per_subject=1),
    )
    out = tmp_path / "loras"
    logs = build_split(pipe_dir, "heldout", 3, out, config, progress=False)
    assert [log["chunk"] for log in logs] == [0, 1]
    seeds = identity_seeds("heldout", 3)
    assert seeds == [100_000, 100_001, 100_002]
    lora = read_lora(lora_path(out, seeds[2]))
    assert lora.metadata["lorasynth.identity"] == "100002"
    assert json.loads(lora.metadata["lorasynth.train_config"])["steps"] == 2

    # A rerun finds nothing to do; a lost file is retrained alone (its chunk).
    assert build_split(pipe_dir, "heldout", 3, out, config, progress=False) == []
    lora_path(out, seeds[0]).unlink()
    assert [
        log["chunk"] for log in build_split(pipe_dir, "heldout", 3, out, config, progress=False)
    ] == [0]

    report = ingest(out, tmp_path / "bank", workers=1, progress=False)
    assert report.ingested == 3 and not report.failed
