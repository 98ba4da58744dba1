from __future__ import annotations

import pytest
import torch

from lorasynth.bank import NORMALISER_FILE, Bank, Normaliser
from lorasynth.bank.ingest import ingest
from lorasynth.lora import LoraLayout, flatten, write_lora
from tests.conftest import random_lora


@pytest.fixture
def lora_dir(tmp_path, tiny_unet):
    layout = LoraLayout.from_unet(tiny_unet, "w2w", 1)
    folder = tmp_path / "loras"
    for i in range(7):
        fmt = "kohya" if i % 2 else "diffusers"
        write_lora(folder / f"subject-{i:02d}.safetensors", random_lora(layout, seed=i), to=fmt)
    return folder, layout


@pytest.mark.parametrize("workers", [1, 2])
def test_ingest_canonicalizes_every_file(tmp_path, lora_dir, workers):
    folder, layout = lora_dir
    report = ingest(folder, tmp_path / "bank", workers=workers, chunk=3, progress=False)
    bank = Bank(tmp_path / "bank")
    assert report.ingested == 7 and not report.failed and len(bank) == 7
    assert bank.ids == [f"subject-{i:02d}" for i in range(7)]
    assert bank.layout_hash == layout.hash
    torch.testing.assert_close(
        bank.vector("subject-03"), flatten(random_lora(layout, seed=3), layout)
    )
    assert Normaliser.load(bank.path / NORMALISER_FILE, layout.hash).rows == 7


def test_bad_files_are_reported_not_fatal(tmp_path, lora_dir):
    folder, _ = lora_dir
    (folder / "broken.safetensors").write_bytes(b"garbage")
    torch.save({"x": 1}, folder / "old.ckpt")
    other = LoraLayout.from_shapes(
        {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (32, 32, 1)}
    )
    write_lora(folder / "zz-other-layout.safetensors", random_lora(other))
    report = ingest(folder, tmp_path / "bank", workers=1, progress=False)
    failed = {f["file"].rsplit("/", 1)[1]: f["error"] for f in report.failed}
    assert report.ingested == 7
    assert set(failed) == {"broken.safetensors", "old.ckpt", "zz-other-layout.safetensors"}
    assert (
        "pickle" in failed["old.ckpt"]
        and "layout mismatch" in failed["zz-other-layout.safetensors"]
    )


def test_rerun_resumes_and_skips_present_ids(tmp_path, lora_dir):
    folder, _ = lora_dir
    files = sorted(folder.iterdir())
    for f in files[4:]:  # first run sees only 4 files: as if killed part-way
        f.rename(f.with_suffix(".hidden"))
    ingest(folder, tmp_path / "bank", workers=1, chunk=2, progress=False)
    for f in files[4:]:
        f.with_suffix(".hidden").rename(f)
    report = ingest(folder, tmp_path / "bank", workers=1, chunk=2, progress=False)
    assert (report.skipped, report.ingested, report.rows) == (4, 3, 7)
    assert Bank(tmp_path / "bank").verify() == []
