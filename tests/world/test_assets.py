from __future__ import annotations

import json

from lorasynth.world import assets
from lorasynth.world.assets import load_manifest, record_stage, verify_assets
from tests.conftest import run_cli


def test_record_and_verify(tmp_path):
    (tmp_path / "embedders").mkdir()
    weights = tmp_path / "embedders" / "mini-eval.safetensors"
    weights.write_bytes(b"x" * 100)
    manifest = record_stage("embedders", [weights], "make it", {"tar": 0.97}, root=tmp_path)
    entry = manifest["files"]["embedders/mini-eval.safetensors"]
    assert entry["bytes"] == 100 and len(entry["sha256"]) == 64 and entry["how_made"] == "make it"
    assert manifest["stages"]["embedders"]["measured"] == {"tar": 0.97}
    assert verify_assets(tmp_path) == []

    weights.write_bytes(b"y" * 100)
    assert "contents differ" in verify_assets(tmp_path)[0]
    weights.unlink()
    assert "missing" in verify_assets(tmp_path)[0]


def test_rerecording_a_stage_replaces_its_files(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"1")
    b.write_bytes(b"22")
    record_stage("s", [a], "x", {}, root=tmp_path)
    manifest = record_stage("s", [b], "x", {}, root=tmp_path)
    assert set(manifest["files"]) == {"b.bin"} and manifest["total_bytes"] == 2
    assert load_manifest(tmp_path)["total_bytes"] == 2


def test_budget(tmp_path, monkeypatch):
    f = tmp_path / "big.bin"
    f.write_bytes(b"0" * 2048)
    record_stage("s", [f], "x", {}, root=tmp_path)
    monkeypatch.setattr(assets, "BUDGET_BYTES", 1024)
    assert "over the" in verify_assets(tmp_path)[0]


def test_world_info_and_verify_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASYNTH_ASSETS", str(tmp_path))
    info = json.loads(run_cli("world", "info", "--json", check=True).stdout)
    assert {
        "identities_train",
        "identities_heldout",
        "layout_hash",
        "preset",
        "rank",
        "embedders",
        "artifact_bytes",
        "measured",
    } <= info.keys()
    assert run_cli("world", "verify").returncode == 0
    (tmp_path / "mini-world").mkdir()
    f = tmp_path / "mini-world" / "w.bin"
    f.write_bytes(b"1")
    record_stage("s", [f], "x", {}, root=tmp_path / "mini-world")
    f.write_bytes(b"2")
    proc = run_cli("world", "verify")
    assert proc.returncode == 1 and "w.bin" in proc.stderr


def test_shipped_banks_are_what_the_world_config_builds():
    """`world info` reports the config's preset and rank; the shipped banks must match them."""
    from lorasynth.bank import Bank
    from lorasynth.world.bank_build import bank_layout
    from lorasynth.world.build import WORLDS

    for world in WORLDS.values():
        from lorasynth.domains import get_domain

        root = get_domain(world.domain).root()
        if not (root / "bank" / "manifest.json").is_file():
            continue  # a domain not built here
        layout = bank_layout(root / "pipeline", world.bank)
        for split in ("bank", "bank-heldout"):
            assert Bank(root / split).layout_hash == layout.hash, (world.domain, split)
