from __future__ import annotations

import numpy as np
import torch

from lorasynth.bank import NORMALISER_FILE, Bank, Normaliser
from lorasynth.bank.conditions import CONDITIONS_FILE, ConditionTable
from lorasynth.faces.mini import EmbedderConfig, MiniEmbedder, save_embedder
from lorasynth.lora import LoraLayout, read_lora
from lorasynth.models.denoiser import Denoiser, DenoiserConfig
from lorasynth.models.representation import PcaRepresentation
from lorasynth.optimize import optimize_latent
from lorasynth.synthesis import Prior, Synthesizer
from lorasynth.world.render import render_identity


def _tiny_synthesizer(pipe, folder, rows: int) -> tuple[Synthesizer, torch.Tensor, LoraLayout]:
    """A random bank of `rows` subjects in the tiny UNet's w2w layout, with conditions."""
    torch.manual_seed(0)
    layout = LoraLayout.from_unet(pipe.unet, "w2w", 1)
    embedder = MiniEmbedder(EmbedderConfig("tiny", "plain", (8, 8), (1, 1), 16)).eval()
    save_embedder(embedder, folder / "e.safetensors")
    ids = [f"s{i}" for i in range(rows)]
    vectors = 0.05 * torch.randn(rows, layout.size)
    bank = Bank.create(folder / "bank", layout)
    bank.append(ids, vectors)
    Normaliser.fit([vectors], layout.hash).save(bank.path / NORMALISER_FILE)
    ConditionTable(
        ids, torch.nn.functional.normalize(torch.randn(rows, 1, 16), dim=-1), embedder.embedder_id
    ).save(bank.path / CONDITIONS_FILE)
    synth = Synthesizer(Bank(bank.path), embedder)
    synth.pipe = pipe
    return synth, vectors, layout


def test_optimize_fits_the_photo_and_writes_a_lora(tiny_pipeline, tmp_path):
    synth, vectors, layout = _tiny_synthesizer(tiny_pipeline, tmp_path, 16)
    pca = PcaRepresentation.fit(synth.normaliser.encode(vectors), 8)
    synth.prior = Prior(
        Denoiser(DenoiserConfig(8, 16, 16, 1)), pca, torch.zeros(8), torch.ones(8), "test"
    )

    photo = render_identity(7, 1)[0][0]
    small = np.asarray(
        __import__("PIL.Image", fromlist=["Image"]).fromarray(photo).resize((16, 16))
    )
    losses: list[float] = []
    vector = optimize_latent(
        synth, tiny_pipeline, small[None], steps=10, lr=0.2, batch=4, losses=losses
    )
    assert vector.shape == (layout.size,) and torch.isfinite(vector).all()
    assert len(losses) == 10 and np.isfinite(losses).all()
    # It moved away from its starting point (the nearest bank subject) along the decoder.
    start = synth.vectors[(synth.embed([small]) @ synth.bank_embeddings.T).argmax()]
    assert (vector - start).norm() > 1e-4 * start.norm()

    synth.optimize_steps = 2
    result = synth.synthesize([photo], method="optimize", out=tmp_path / "o.safetensors")
    assert read_lora(tmp_path / "o.safetensors").metadata["lorasynth.method"] == "optimize"
    assert result.time_ms > 0


def test_trained_method_runs_a_real_training(tiny_pipeline, tmp_path):
    synth, _, layout = _tiny_synthesizer(tiny_pipeline, tmp_path, 2)
    vector = synth.train([render_identity(3, 1)[0][0]], steps=3)
    assert vector.shape == (layout.size,) and vector.abs().max() > 0
