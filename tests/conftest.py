"""Tiny models built from configs (no downloads) and LoRA factories shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorasynth.lora import LoraFile, LoraLayout, LoraModule

# One torch thread per test process (and for the CLI subprocesses tests start): with pytest-xdist
# running two workers on two cores, more threads oversubscribe the CPU and slow tests ~40x.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
torch.set_num_threads(1)

TINY_UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": [32, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 24,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}


@pytest.fixture
def one_thread():
    """Many small ops: one thread is faster on a busy machine than two that wait for each other.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_UNET_CONFIG).eval()


def tiny_tokenizer(folder: Path):
    """A real CLIP BPE tokenizer with a byte-level vocabulary and no merges."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(
        vocab={tok: i for i, tok in enumerate(tokens)}, merges=[], model_max_length=16
    )
    tokenizer.save_pretrained(str(folder))
    return tokenizer


@pytest.fixture
def tiny_pipeline(tmp_path):
    """A real StableDiffusionPipeline from tiny configs with random weights."""
    return build_tiny_pipeline(tmp_path)


def build_tiny_pipeline(tmp_path: Path):
    """A real StableDiffusionPipeline from tiny configs with random weights (seed 0)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    vae = AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=8,
    )
    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def random_lora(
    layout: LoraLayout, seed: int = 0, rank: int | None = None, alpha: float | None = None
) -> LoraFile:
    """Random factors for every row of `layout` (rank defaults to the layout's)."""
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for row in layout.rows:
        r = rank or row.rank
        modules[row.module] = LoraModule(
            torch.randn(r, row.in_features, generator=gen),
            torch.randn(row.out_features, r, generator=gen),
            float(alpha if alpha is not None else r),
            row.kernel,
        )
    return LoraFile(modules)


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m lorasynth ARGS` as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "lorasynth", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"lorasynth {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit status 2, a single stderr line starting with `error:`, no traceback."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="session")
def built_tiny_products(tmp_path_factory) -> Path:
    """A products mini-world built once per session on tiny configs (~40 s); see tiny_worlds."""
    from tests.tiny_worlds import build_tiny_products

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_tiny_products(tmp_path_factory.mktemp("tiny-products"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def tiny_products_world(built_tiny_products, monkeypatch) -> Path:
    """The built tiny products world as this test's LORASYNTH_ASSETS / LORASYNTH_BUILD (no faces
    models there). Tests must not write into it: it is shared by the session."""
    from tests.tiny_worlds import use_world

    use_world(monkeypatch, built_tiny_products)
    return built_tiny_products
