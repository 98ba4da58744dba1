"""The README's real-scale workflow, every step through the CLI, at SD1.5's real dimensions on
random data (few rows, few steps): import-w2w -> conditions -> train vae -> train prior ->
synthesize --base -> a kohya LoRA for SD1.5."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lorasynth.bank import Bank
from lorasynth.bank.w2w import W2W_ALPHA, loras_to_w2w_rows
from lorasynth.lora import LoraLayout
from lorasynth.world.pipeline_io import sd15_config_dir
from tests.conftest import random_lora, run_cli

pytestmark = pytest.mark.slow

SD15 = LoraLayout.sd15("w2w", 1)


def test_real_scale_workflow(tmp_path):
    # weights2weights-style release: rows in its flat order, one identity folder per row whose
    # names sort as strings ("0", "1", "10", ...), as their all_weights.pt was concatenated.
    names = sorted(str(i) for i in range(12))
    loras = [random_lora(SD15, seed=i, alpha=W2W_ALPHA) for i in range(len(names))]
    torch.save(0.01 * loras_to_w2w_rows(loras, SD15), tmp_path / "all_weights.pt")
    photos = tmp_path / "identities"
    rng = np.random.default_rng(0)
    for name in names:
        (photos / name).mkdir(parents=True)
        for k in range(2):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(photos / name / f"{k}.png")
    bank, vae_run, prior_run = tmp_path / "bank", tmp_path / "vae", tmp_path / "prior"
    # A diffusers folder with the SD1.5 configs stands in for the user's model: --base checks
    # the bank's layout against its UNet config (the weights load only for optimize/trained).
    base = str(sd15_config_dir())

    run_cli("bank", "import-w2w", tmp_path / "all_weights.pt", bank, "--names", photos, check=True)
    assert Bank(bank).ids == names and Bank(bank).layout_hash == SD15.hash
    run_cli(
        "bank", "conditions", bank, photos, "--embedder", "mini-arcface", "--per-row", "2",
        check=True,
    )  # fmt: skip
    small = ["--set", "steps=2", "--set", "batch_size=4", "--set", "checkpoint_every=100"]
    run_cli(
        "train", "vae", bank, "--out", vae_run, "--base", base, *small,
        "--set", "latent_dim=512", "--set", "hidden=256", check=True,
    )  # fmt: skip
    vae_file = vae_run / "lora-vae.safetensors"
    run_cli(
        "train", "prior", bank, "--out", prior_run, "--vae", vae_file, "--base", base, *small,
        "--set", "width=128", "--set", "depth=2", check=True,
    )  # fmt: skip
    out = tmp_path / "subject.safetensors"
    proc = run_cli(
        "synthesize", photos / "3" / "0.png", "--out", out, "--format", "kohya",
        "--bank", bank, "--prior", prior_run / "prior.safetensors", "--vae", vae_file,
        "--embedder", "mini-arcface", "--base", base, "--steps", "2", "--json", check=True,
    )  # fmt: skip
    assert json.loads(proc.stdout)["layout_hash"] == SD15.hash
    info = json.loads(run_cli("lora", "inspect", out, "--json", check=True).stdout)
    assert info["architecture"] == "stable-diffusion-v1/lora" and info["modules"] == 64
    assert info["params"] == 99_648 and info["format"] == "kohya"

    # A bank for another model is refused before any training starts.
    proc = run_cli("train", "vae", bank, "--out", tmp_path / "x", "--base", tmp_path / "nope")
    assert proc.returncode == 2 and "nope" in proc.stderr
