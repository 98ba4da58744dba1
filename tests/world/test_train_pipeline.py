"""Training the mini-world pipeline (tiny configs, a few steps) and its metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from lorasynth.checkpoint import load_training_state
from lorasynth.errors import LorasynthError
from lorasynth.world import train_pipeline as tp
from lorasynth.world.attributes import BACKGROUNDS
from lorasynth.world.pipeline_build import (
    TINY_CONFIG,
    make_text_encoder,
    make_tokenizer,
    make_train_scheduler,
    make_unet,
    make_vae,
)
from lorasynth.world.prompt_fidelity import (
    classify_background,
    frechet_distance,
    frechet_distance_images,
    prompt_fidelity,
)

VAE_CFG = tp.VaeTrainConfig(pipeline=TINY_CONFIG, batch_size=4, scale_samples=64, eval_samples=32)
UNET_CFG = tp.UNetTrainConfig(pipeline=TINY_CONFIG, batch_size=4, warmup=2, sample_every=0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A run folder holding a (barely) trained tiny VAE."""
    out = tmp_path_factory.mktemp("run")
    tp.train_vae(out, 3, VAE_CFG, progress=False)
    return out


def test_training_batches_are_deterministic_and_skip_bank_identities():
    images, captions, backgrounds = tp.training_batch(0, 7, 6, 50)
    again = tp.training_batch(0, 7, 6, 50)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, again[0])
    assert captions == again[1]
    assert all(bg in c for bg, c in zip(backgrounds, captions, strict=True))
    assert not np.array_equal(images, tp.training_batch(0, 8, 6, 50)[0])
    with pytest.raises(LorasynthError, match="LoRA bank"):
        tp.training_batch(0, 0, 2, 10, first=999_999)


def test_vae_steps_reduce_loss():
    torch.manual_seed(0)
    vae = make_vae(TINY_CONFIG.vae)
    x = tp.to_model_range(tp.training_batch(0, 0, 8, 100)[0])
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    losses = []
    for step in range(25):
        loss, _ = tp.vae_loss(vae, x, VAE_CFG, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_diffusion_steps_reduce_loss():
    torch.manual_seed(0)
    cfg = TINY_CONFIG
    tokenizer = make_tokenizer(cfg.text)
    unet, text_encoder = (
        make_unet(cfg.unet, cfg.vae, cfg.text),
        make_text_encoder(cfg.text, tokenizer),
    )
    scheduler = make_train_scheduler(cfg.scheduler)
    # Flat latents: learnable in a few steps (unlike white noise, whose v-target is unpredictable).
    latents = torch.randn(8, 4, 1, 1, generator=torch.Generator().manual_seed(1)).expand(
        8, 4, 16, 16
    )
    prompts = tp.training_batch(0, 0, 8, 100)[1]
    opt = torch.optim.AdamW([*unet.parameters(), *text_encoder.parameters()], lr=2e-3)

    def loss_at(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return tp.diffusion_loss(unet, text_encoder, tokenizer, scheduler, latents, prompts, gen)

    with torch.no_grad():
        before = np.mean([loss_at(1000 + i).item() for i in range(4)])
    for step in range(30):
        loss = loss_at(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = np.mean([loss_at(1000 + i).item() for i in range(4)])
    assert after < 0.8 * before


def test_vae_stage_writes_scaled_vae(vae_run):
    vae = tp.load_vae(vae_run)
    assert vae.config.scaling_factor > 0 and vae.config.scaling_factor != 1.0
    record = (vae_run / "vae-run.json").read_text()
    assert '"scaling_factor"' in record and '"psnr_db"' in record


def test_vae_resume_continues_exactly(tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    tp.train_vae(straight, 4, VAE_CFG, progress=False)
    tp.train_vae(resumed, 2, VAE_CFG, progress=False)
    tp.train_vae(resumed, 4, VAE_CFG, resume=True, progress=False)
    a = tp.load_vae(straight).state_dict()
    b = tp.load_vae(resumed).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_unet_resume_continues_exactly(vae_run, tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vae").symlink_to(vae_run / "vae", target_is_directory=True)
    tp.train_unet(tmp_path / "a", 4, UNET_CFG, progress=False)
    tp.train_unet(tmp_path / "b", 2, UNET_CFG, progress=False)
    tp.train_unet(tmp_path / "b", 4, UNET_CFG, resume=True, progress=False)
    states = []
    for name in ("a", "b"):
        ema = make_unet(TINY_CONFIG.unet, TINY_CONFIG.vae, TINY_CONFIG.text)
        state = load_training_state(
            tmp_path / name / "unet-state.safetensors", modules={"ema_unet": ema}
        )
        assert state["step"] == 4
        states.append(ema.state_dict())
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=1e-4, atol=1e-6)
    # The run's pipeline is a loadable SD pipeline holding the EMA weights.
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "a" / "pipeline")
    torch.testing.assert_close(pipe.unet.state_dict(), states[0])


def test_resume_refuses_another_config(vae_run, tmp_path):
    (tmp_path / "vae").symlink_to(vae_run / "vae", target_is_directory=True)
    tp.train_unet(tmp_path, 1, UNET_CFG, progress=False)
    other = dataclasses.replace(UNET_CFG, lr=1e-2)
    with pytest.raises(LorasynthError, match=r"another config \(differs in \['lr'\]\)"):
        tp.train_unet(tmp_path, 2, other, resume=True, progress=False)
    with pytest.raises(LorasynthError, match="nothing to resume"):
        tp.train_vae(tmp_path / "new", 2, VAE_CFG, resume=True, progress=False)


def test_background_classifier_is_exact_on_renders():
    images, _, backgrounds = tp.training_batch(3, 0, 200, 10_000, first=tp.EVAL_FIRST_IDENTITY)
    assert set(backgrounds) == set(BACKGROUNDS)
    assert classify_background(images) == backgrounds
    assert prompt_fidelity(images, backgrounds) == 1.0
    flat = np.broadcast_to(np.array(BACKGROUNDS["teal"], np.uint8), (32, 32, 3))
    assert classify_background(flat) == ["teal"]


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Equal covariances, means 1 apart in each of 6 coordinates: exactly 6.
    assert frechet_distance(a, a + 1.0) == pytest.approx(6.0, rel=1e-6)
    assert frechet_distance(a, 2.0 * a) > 0.5
    images = tp.training_batch(0, 0, 250, 1000)[0]
    assert frechet_distance_images(images, images) == pytest.approx(0.0, abs=1e-6)
    darker = (images // 2).astype(np.uint8)
    assert frechet_distance_images(images, darker) > 1.0
    with pytest.raises(LorasynthError, match="equal D"):
        frechet_distance(a, a[:, :3])


def test_evaluate_and_grid(vae_run, tmp_path):
    (tmp_path / "vae").symlink_to(vae_run / "vae", target_is_directory=True)
    tp.train_unet(tmp_path, 1, UNET_CFG, progress=False)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    metrics = tp.evaluate_pipeline(pipe, num_samples=20, num_inference_steps=2)
    assert metrics["classifier_accuracy_on_renders"] == 1.0
    assert 0.0 <= metrics["prompt_fidelity"] <= 1.0
    assert metrics["frechet_generated_vs_real"] > metrics["frechet_real_vs_real"] > 0
    path = tp.save_sample_grid(pipe, tmp_path / "grid.png", num_inference_steps=1)
    assert path.is_file()
    assert tp.image_grid(np.zeros((10, 32, 32, 3), np.uint8), columns=8).shape == (132, 528, 3)
