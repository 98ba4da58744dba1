"""The `lorasynth bank` contract, run as a user runs it."""

from __future__ import annotations

import json

from lorasynth.lora import LoraLayout, write_lora
from tests.conftest import assert_one_line_error, random_lora, run_cli


def test_ingest_info_verify_export(tmp_path, tiny_unet):
    layout = LoraLayout.from_unet(tiny_unet, "w2w", 1)
    loras = tmp_path / "loras"
    for i in range(5):
        write_lora(loras / f"s{i}.safetensors", random_lora(layout, seed=i), to="kohya")
    (loras / "bad.safetensors").write_bytes(b"nope")
    bank = tmp_path / "bank"

    proc = run_cli("bank", "ingest", loras, bank, "--workers", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ingested"] == 5 and len(report["failed"]) == 1
    assert "bad.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    assert run_cli("bank", "ingest", loras, bank, "--strict").returncode == 1

    info = json.loads(run_cli("bank", "info", bank, "--json", check=True).stdout)
    assert info["rows"] == 5 and info["layout_hash"] == layout.hash
    assert (
        info["dtype"] == "float32"
        and info["shards"] == 1
        and info["ids"] == [f"s{i}" for i in range(5)]
    )

    assert run_cli("bank", "verify", bank).returncode == 0
    out = tmp_path / "s3.safetensors"
    run_cli("bank", "export", bank, "s3", out, "--to", "kohya", check=True)
    assert (
        json.loads(run_cli("lora", "inspect", out, "--json", check=True).stdout)["layout_hash"]
        == layout.hash
    )

    shard = bank / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x55
    shard.write_bytes(bytes(data))
    proc = run_cli("bank", "verify", bank)
    assert proc.returncode == 1 and "shard-00000" in proc.stderr


def test_bank_errors(tmp_path):
    assert_one_line_error(run_cli("bank", "info", tmp_path), "not a bank")
    assert_one_line_error(
        run_cli("bank", "ingest", tmp_path / "missing", tmp_path / "b"), "not a directory"
    )
    (tmp_path / "empty").mkdir()
    assert_one_line_error(
        run_cli("bank", "ingest", tmp_path / "empty", tmp_path / "b"), "no LoRA files"
    )


def test_ingest_and_train_take_a_base(tmp_path, tiny_pipeline):
    """--base gives ingest its expected layout and lets train refuse a bank for another model."""
    base = tmp_path / "base"
    tiny_pipeline.save_pretrained(str(base))
    layout = LoraLayout.from_unet(tiny_pipeline.unet, "w2w", 1)
    loras = tmp_path / "loras"
    for i in range(2):
        write_lora(loras / f"s{i}.safetensors", random_lora(layout, seed=i), to="kohya")
    write_lora(
        loras / "attn.safetensors",
        random_lora(LoraLayout.from_unet(tiny_pipeline.unet, "attn", 1)),
        to="kohya",
    )
    bank = tmp_path / "bank"
    proc = run_cli("bank", "ingest", loras, bank, "--preset", "w2w", "--base", base, "--json")
    report = json.loads(proc.stdout)
    assert report["ingested"] == 2 and report["layout_hash"] == layout.hash
    assert len(report["failed"]) == 1 and "attn.safetensors" in report["failed"][0]["file"]

    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text("{}")
    (other / "unet").mkdir()
    from lorasynth.lora.layout import load_unet_config

    (other / "unet" / "config.json").write_text(json.dumps(load_unet_config("sd15")))
    assert_one_line_error(
        run_cli("train", "vae", bank, "--out", tmp_path / "run", "--base", other),
        "does not fit base",
    )
