"""The bank stage refuses to add LoRAs trained on a different base UNet than the bank's."""

from __future__ import annotations

import hashlib

import pytest

from lorasynth.bank import Bank
from lorasynth.errors import LorasynthError
from lorasynth.lora import LoraLayout
from lorasynth.world import bank_build
from lorasynth.world import build as wb

LAYOUT = LoraLayout.from_shapes({"down_blocks.0.attentions.0.proj_in": (4, 4, 1)})


def test_bank_of_another_base_unet_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASYNTH_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setenv("LORASYNTH_BUILD", str(tmp_path / "build"))
    monkeypatch.setattr(bank_build, "bank_layout", lambda pipeline, config: LAYOUT)
    monkeypatch.setattr(bank_build, "base_unet_id", lambda pipeline: "new0000000000000")
    monkeypatch.setattr(wb, "_run_workers", lambda *a, **k: pytest.fail("trained anyway"))
    bank_path = tmp_path / "assets" / "mini-world" / "bank"
    Bank.create(bank_path, LAYOUT, {"domain": "faces", "base_unet": "old0000000000000"})

    with pytest.raises(LorasynthError, match=r"old0000000000000.*new0000000000000"):
        wb.STAGES["bank"](wb.WORLD, True, False)


def test_base_unet_id_is_the_weights_file_hash_prefix(tmp_path):
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    assert bank_build.base_unet_id(tmp_path) == (hashlib.sha256(b"weights").hexdigest()[:16])


def test_a_worker_run_directly_is_refused_too(tmp_path, monkeypatch):
    monkeypatch.setattr(bank_build, "bank_layout", lambda pipeline, config: LAYOUT)
    monkeypatch.setattr(bank_build, "base_unet_id", lambda pipeline: "new0000000000000")
    Bank.create(tmp_path / "bank", LAYOUT, {"domain": "faces", "base_unet": "old0000000000000"})

    with pytest.raises(LorasynthError, match=r"old0000000000000.*new0000000000000"):
        bank_build.build_split(tmp_path / "pipeline", "train", 1, tmp_path / "bank", wb.WORLD.bank)


class _Stop(Exception):
    pass


def test_a_gpu_bank_build_is_one_process_with_big_chunks(tmp_path, monkeypatch):
    from dataclasses import replace

    monkeypatch.setenv("LORASYNTH_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setenv("LORASYNTH_BUILD", str(tmp_path / "build"))
    monkeypatch.setattr(bank_build, "bank_layout", lambda pipeline, config: LAYOUT)
    monkeypatch.setattr(bank_build, "base_unet_id", lambda pipeline: "new0000000000000")
    calls = []

    def fake_workers(pipeline, split, count, bank, logs, config, workers, device="cpu"):
        calls.append((config.chunk, workers, device))
        raise _Stop

    monkeypatch.setattr(wb, "_run_workers", fake_workers)
    for device, expected in (("cpu", (wb.WORLD.bank.chunk, 2, "cpu")), ("cuda", (500, 1, "cuda"))):
        with pytest.raises(_Stop):
            wb.STAGES["bank"](replace(wb.WORLD, device=device), True, False)
        assert calls[-1] == expected


def test_an_unusable_device_is_refused_before_building(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(wb, "_run_workers", lambda *a, **k: pytest.fail("trained anyway"))
    with pytest.raises(LorasynthError, match="no CUDA GPU"):
        wb.build("bank", device="cuda")


def test_the_unet_stage_trains_on_the_world_device(tmp_path, monkeypatch):
    from dataclasses import replace

    from lorasynth.world import train_pipeline

    monkeypatch.setenv("LORASYNTH_BUILD", str(tmp_path / "build"))
    seen = {}

    def fake_build_unet(**kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(train_pipeline, "build_unet", fake_build_unet)
    with pytest.raises(_Stop):
        wb.STAGES["unet"](replace(wb.WORLD, device="cuda"), True, False)
    assert seen["device"] == "cuda"
