from __future__ import annotations

from lorasynth.bank import Bank
from lorasynth.lora import read_lora
from lorasynth.world.bank_build import BankBuildConfig, build_split, lora_path
from lorasynth.world.identities import bank_id, identity_seeds
from lorasynth.world.lora_trainer import LoraTrainConfig


def test_build_split_appends_chunks_and_resumes_from_the_bank(tiny_pipeline, tmp_path):
    pipe_dir = tmp_path / "pipe"
    tiny_pipeline.save_pretrained(str(pipe_dir))
    config = BankBuildConfig(
        images_per_identity=2,
        chunk=2,
        image_size=16,
        lora=LoraTrainConfig(preset="w2w", rank=1, steps=2, samples_per_subject=1),
    )
    bank_path = tmp_path / "bank"
    files = tmp_path / "files"
    logs = build_split(
        pipe_dir,
        "heldout",
        3,
        bank_path,
        config,
        progress=False,
        log_dir=tmp_path / "logs",
        files_dir=files,
    )
    assert [log["chunk"] for log in logs] == [0, 1]
    seeds = identity_seeds("heldout", 3)
    assert seeds == [100_000, 100_001, 100_002]
    bank = Bank(bank_path)
    assert bank.ids == [bank_id(s) for s in seeds] and bank.verify() == []
    assert read_lora(lora_path(files, seeds[2])).metadata["lorasynth.identity"] == "100002"
    assert (tmp_path / "logs" / "chunk-00001.json").is_file()

    # A rerun finds nothing to do; a bigger count trains only the new identities.
    assert build_split(pipe_dir, "heldout", 3, bank_path, config, progress=False) == []
    assert [
        log["chunk"]
        for log in build_split(pipe_dir, "heldout", 5, bank_path, config, progress=False)
    ] == [1, 2]
    assert len(Bank(bank_path)) == 5


def test_workers_split_chunks(tiny_pipeline, tmp_path):
    pipe_dir = tmp_path / "pipe"
    tiny_pipeline.save_pretrained(str(pipe_dir))
    config = BankBuildConfig(
        images_per_identity=1,
        chunk=1,
        image_size=16,
        lora=LoraTrainConfig(preset="w2w", rank=1, steps=1, samples_per_subject=1),
    )
    a = build_split(
        pipe_dir, "train", 3, tmp_path / "b", config, worker=0, workers=2, progress=False
    )
    b = build_split(
        pipe_dir, "train", 3, tmp_path / "b", config, worker=1, workers=2, progress=False
    )
    assert [x["chunk"] for x in a] == [0, 2] and [x["chunk"] for x in b] == [1]
    assert sorted(Bank(tmp_path / "b").ids) == [bank_id(s) for s in range(3)]
