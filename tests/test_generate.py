from __future__ import annotations

import numpy as np
from PIL import Image

from lorasynth.lora import LoraLayout, write_lora
from tests.conftest import assert_one_line_error, random_lora, run_cli


def test_generate_with_and_without_lora(tiny_pipeline, tmp_path):
    pipe_dir = tmp_path / "pipe"
    tiny_pipeline.save_pretrained(str(pipe_dir))
    layout = LoraLayout.from_unet(tiny_pipeline.unet, "attn", 2)
    lora = write_lora(tmp_path / "s.safetensors", random_lora(layout, alpha=2.0), to="kohya")
    args = [
        "--prompt",
        "a photo of sks person",
        "--n",
        "2",
        "--base",
        pipe_dir,
        "--steps",
        "2",
        "--seed",
        "4",
    ]
    for name, extra in (("base", []), ("lora", ["--lora", lora])):
        proc = run_cli("generate", *args, *extra, "--out", tmp_path / name, "--scale", "4")
        assert proc.returncode == 0, proc.stderr
    base = np.asarray(Image.open(tmp_path / "base" / "0000.png"))
    tuned = np.asarray(Image.open(tmp_path / "lora" / "0000.png"))
    assert base.shape == tuned.shape == (16, 16, 3)  # sample_size 8 x VAE factor 2
    assert Image.open(tmp_path / "lora" / "0000-x4.png").size == (64, 64)
    assert np.abs(base.astype(int) - tuned.astype(int)).max() > 0  # the LoRA changed the images
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    assert_one_line_error(
        run_cli("generate", *args, "--lora", bad, "--out", tmp_path / "x"), "bad.safetensors"
    )
    assert_one_line_error(
        run_cli("generate", *args, "--device", "cuda:7", "--out", tmp_path / "y"), "--device"
    )
    assert not (tmp_path / "y").exists()
    proc = run_cli("generate", *args, "--device", "cpu", "--out", tmp_path / "cpu")
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cpu" / "0000.png")), base)
