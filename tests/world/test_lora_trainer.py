from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lorasynth.errors import LorasynthError
from lorasynth.lora import LoraLayout, read_lora, write_lora
from lorasynth.world.lora_trainer import (
    LoraTrainConfig,
    encode_images,
    encode_prompts,
    loaded_loras,
    set_subjects,
    train_subject_loras,
)


def _data(subjects=3, per_subject=2, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (subjects, per_subject, size, size, 3), dtype=np.uint8)
    prompts = [
        [f"a photo of sks person, {c} background" for c in ("red", "blue")][:per_subject]
    ] * subjects
    return images, prompts


@pytest.mark.parametrize("preset", ["attn", "attn-ff-conv"])
def test_batched_forward_equals_diffusers_loaded_lora(tiny_pipeline, tmp_path, preset):
    layout = LoraLayout.from_unet(tiny_pipeline.unet, preset, 2)
    images, prompts = _data()
    config = LoraTrainConfig(
        preset=preset, rank=2, alpha=1.0, steps=3, lr=0.05, samples_per_subject=2
    )
    loras, log = train_subject_loras(tiny_pipeline, layout, images, prompts, config, progress=False)
    assert len(loras) == 3 and len(log["loss"]) == 3
    assert all(w.up.abs().max() > 0 for w in loras[1].modules.values())

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    t = torch.tensor([500])
    cond = encode_prompts(tiny_pipeline, ["a photo of sks person"])

    reference = copy.deepcopy(tiny_pipeline)
    path = write_lora(tmp_path / "s1.safetensors", loras[1], to="diffusers")
    reference.load_lora_weights(str(read_lora(path).path))
    with torch.no_grad():
        expected = reference.unet(x, t, encoder_hidden_states=cond).sample

    with loaded_loras(tiny_pipeline.unet, loras, layout) as wrapped, torch.no_grad():
        set_subjects(wrapped, torch.tensor([1]))
        got = tiny_pipeline.unet(x, t, encoder_hidden_states=cond).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # The UNet is restored afterwards.
    modules = dict(tiny_pipeline.unet.named_modules())
    assert all(
        type(modules[row.module]) in (torch.nn.Linear, torch.nn.Conv2d) for row in layout.rows
    )


def test_training_lowers_each_subjects_loss(tiny_pipeline):
    layout = LoraLayout.from_unet(tiny_pipeline.unet, "attn", 2)
    images, prompts = _data(subjects=2, per_subject=2)
    config = LoraTrainConfig(rank=2, steps=40, lr=0.01, samples_per_subject=2)
    loras, _ = train_subject_loras(tiny_pipeline, layout, images, prompts, config, progress=False)

    gen = torch.Generator().manual_seed(3)
    latents = encode_images(tiny_pipeline.vae, images.reshape(-1, 16, 16, 3), gen)
    cond = encode_prompts(tiny_pipeline, [p for s in prompts for p in s])
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.full((len(latents),), 400)
    sched = tiny_pipeline.scheduler
    noisy = sched.add_noise(latents, noise, t)
    with torch.no_grad():
        base = (
            (tiny_pipeline.unet(noisy, t, encoder_hidden_states=cond).sample - noise) ** 2
        ).mean()
        with loaded_loras(tiny_pipeline.unet, loras, layout) as wrapped:
            set_subjects(wrapped, torch.arange(2).repeat_interleave(2))
            tuned = (
                (tiny_pipeline.unet(noisy, t, encoder_hidden_states=cond).sample - noise) ** 2
            ).mean()
    assert tuned < base


def test_shared_init_starts_every_subject_from_the_same_down_factor(tiny_pipeline):
    from lorasynth.world.lora_trainer import batched_loras

    layout = LoraLayout.from_unet(tiny_pipeline.unet, "attn-ff-conv", 2)
    for shared in (True, False):
        gen = torch.Generator().manual_seed(0)
        with batched_loras(tiny_pipeline.unet, layout, 3, 1.0, gen, shared) as wrapped:
            down = next(iter(wrapped.values())).down
            assert torch.equal(down[0], down[2]) is shared
    images, prompts = _data()
    config = LoraTrainConfig(rank=2, steps=3, lr=0.05, samples_per_subject=2, shared_init=True)
    loras, _ = train_subject_loras(tiny_pipeline, layout, images, prompts, config, progress=False)
    name = layout.rows[0].module
    assert not torch.equal(loras[0].modules[name].down, loras[1].modules[name].down)


def test_frozen_down_trains_only_the_up_factors(tiny_pipeline):
    layout = LoraLayout.from_unet(tiny_pipeline.unet, "attn-ff-conv", 2)
    images, prompts = _data()
    config = LoraTrainConfig(
        rank=2, steps=3, lr=0.05, samples_per_subject=2, shared_init=True, train_down=False
    )
    loras, _ = train_subject_loras(tiny_pipeline, layout, images, prompts, config, progress=False)
    for row in layout.rows:
        first, second = loras[0].modules[row.module], loras[1].modules[row.module]
        assert torch.equal(first.down, second.down)  # one shared, untouched draw
        assert first.up.abs().sum() > 0 and not torch.equal(first.up, second.up)
    with pytest.raises(LorasynthError, match="shared_init"):
        LoraTrainConfig(train_down=False)


def test_snapshot_equals_a_run_of_that_many_steps(tiny_pipeline):
    """A steps sweep from one run: with a constant learning rate, the LoRAs after step n are
    the LoRAs of an n-step run (same seed), and the last snapshot is the returned LoRAs."""
    layout = LoraLayout.from_unet(tiny_pipeline.unet, "attn-ff-conv", 1)
    images, prompts = _data()
    config = LoraTrainConfig(preset="attn-ff-conv", rank=1, steps=4, lr=0.05)
    loras, log = train_subject_loras(
        tiny_pipeline, layout, images, prompts, config, progress=False, snapshots=(2, 4)
    )
    assert sorted(log["snapshots"]) == [2, 4] and log["snapshots"][4] is loras
    assert len(log["loss"]) == 4 and all(isinstance(v, float) for v in log["loss"])
    short, short_log = train_subject_loras(
        tiny_pipeline,
        layout,
        images,
        prompts,
        LoraTrainConfig(preset="attn-ff-conv", rank=1, steps=2, lr=0.05),
        progress=False,
    )
    assert short_log["snapshots"] == {} and short_log["loss"] == log["loss"][:2]
    for name, module in short[1].modules.items():
        snap = log["snapshots"][2][1].modules[name]
        torch.testing.assert_close(snap.up, module.up)
        torch.testing.assert_close(snap.down, module.down)
        assert not torch.equal(loras[1].modules[name].up, module.up)
