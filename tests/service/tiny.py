"""A tiny mini-world for the service tests: bank, normaliser, conditions and a random
embedder, built on disk in about a second so a server subprocess can load it too."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import torch

LAYOUT_SHAPES = {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (16, 8, 2)}
ROWS, PHOTOS = 24, 2


def build(root: Path) -> Path:
    """Write the tiny world under `root` (bank/, embedder.safetensors); return root."""
    build_bank(root, ROWS, PHOTOS)
    return root


def build_bank(root: Path, rows: int, photos_per_row: int):
    """A bank under `root` whose vectors are a function of its subjects' face embeddings (by a
    random embedder, saved as root/embedder.safetensors), with normaliser and conditions.

    Returns (embedder, photos (rows, photos_per_row, 32, 32, 3), vectors, bank)."""
    from lorasynth.bank import NORMALISER_FILE, Bank, Normaliser
    from lorasynth.bank.conditions import CONDITIONS_FILE, ConditionTable
    from lorasynth.faces.mini import EmbedderConfig, MiniEmbedder, embed_images, save_embedder
    from lorasynth.lora import LoraLayout
    from lorasynth.world.render import render_identity

    layout = LoraLayout.from_shapes(LAYOUT_SHAPES)
    torch.manual_seed(0)
    embedder = MiniEmbedder(EmbedderConfig("tiny", "plain", (8, 8), (1, 1), 16)).eval()
    save_embedder(embedder, root / "embedder.safetensors")
    photos = np.stack(
        [np.stack([im for im, _ in render_identity(s, photos_per_row, 5)]) for s in range(rows)]
    )
    emb = embed_images(embedder, photos.reshape(-1, 32, 32, 3)).reshape(rows, photos_per_row, -1)
    mix = torch.randn(16, layout.size, generator=torch.Generator().manual_seed(1))
    vectors = torch.nn.functional.normalize(emb.mean(1), dim=-1) @ mix
    ids = [f"id-{s:07d}" for s in range(rows)]
    bank = Bank.create(root / "bank", layout)
    bank.append(ids, vectors)
    Normaliser.fit([vectors], layout.hash).save(bank.path / NORMALISER_FILE)
    ConditionTable(ids, emb, embedder.embedder_id).save(bank.path / CONDITIONS_FILE)
    return embedder, photos, vectors, bank


def load(root: Path | None = None, delay_s: float | None = None):
    """The Synthesizer of a built tiny world; `delay_s` makes every synthesis that slow."""
    from lorasynth.bank import Bank
    from lorasynth.faces.mini import load_embedder
    from lorasynth.synthesis import Synthesizer

    root = Path(root or os.environ["LORASYNTH_TINY_WORLD"])
    synth = Synthesizer(Bank(root / "bank"), load_embedder(root / "embedder.safetensors"))
    delay = float(os.environ.get("LORASYNTH_TINY_DELAY", "0")) if delay_s is None else delay_s
    if delay:
        inner = synth.vectors_for

        def slow(*args, **kwargs):
            time.sleep(delay)
            return inner(*args, **kwargs)

        synth.vectors_for = slow
    return synth


def photo_png(identity: int = 0, index: int = 0, size: int = 32) -> bytes:
    from PIL import Image

    from lorasynth.world.render import render_identity

    image = render_identity(identity, index + 1, 7)[index][0]
    buf = io.BytesIO()
    Image.fromarray(image).resize((size, size)).save(buf, format="PNG")
    return buf.getvalue()


def previewer(_lora_path: Path) -> list:
    """Stand-in for pipeline previews: renders of identity 0."""
    from PIL import Image

    from lorasynth.world.render import render_identity

    return [Image.fromarray(im) for im, _ in render_identity(0, 2, 11)]


def prior(synth):
    """An untrained prior for `synth`'s bank (8 PCA directions, a one-block denoiser), so
    `diffusion` runs; its LoRAs are random but finite."""
    from lorasynth.models.denoiser import Denoiser, DenoiserConfig
    from lorasynth.models.representation import PcaRepresentation
    from lorasynth.synthesis import Prior

    torch.manual_seed(0)
    pca = PcaRepresentation.fit(synth.normaliser.encode(synth.vectors), 8)
    model = Denoiser(DenoiserConfig(8, synth.bank_embeddings.shape[1], 16, 1)).eval()
    return Prior(model, pca, torch.zeros(8), torch.ones(8), "tiny-prior")
