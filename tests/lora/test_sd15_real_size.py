"""The real SD1.5 architecture (random weights, no download): layout, LoRA load, one step."""

from __future__ import annotations

import pytest
import torch

from lorasynth.lora import LoraLayout, flatten, read_lora, unflatten, write_lora
from lorasynth.lora.layout import load_unet_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sd15_pipeline():
    """The SD1.5 UNet at full size (random weights) in a pipeline whose VAE and text encoder
    are cut down (a 768-d one-layer CLIP text model) to keep the test's memory small."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorasynth.world.pipeline_io import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(load_unet_config("sd15")).eval()
    vae = AutoencoderKL(
        block_out_channels=[8, 16],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=8,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=768,
            num_hidden_layers=1,
            num_attention_heads=12,
            max_position_embeddings=77,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_sd15_unet_takes_a_synthesized_w2w_lora(sd15_pipeline, tmp_path, fmt):
    pipe = sd15_pipeline
    layout = LoraLayout.from_unet(pipe.unet, "w2w", 1)
    assert layout.size == 99_648 and layout == LoraLayout.sd15("w2w", 1)

    raw = 0.01 * torch.randn(layout.size, generator=torch.Generator().manual_seed(1))
    vector = flatten(unflatten(raw, layout), layout)  # what a synthesizer emits: canonical
    lora = unflatten(vector, layout)
    path = write_lora(tmp_path / "subject.safetensors", lora, to=fmt)
    torch.testing.assert_close(flatten(read_lora(path), layout), vector, rtol=1e-5, atol=1e-7)

    x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    context = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = pipe.unet(x, 10, encoder_hidden_states=context).sample
    pipe.load_lora_weights(str(path), adapter_name="subject")
    try:
        modules = dict(pipe.unet.named_modules())
        for name in (layout.modules[0], layout.modules[-1]):  # first and last, full size
            layer = modules[name]
            eye = torch.eye(layer.get_base_layer().in_features)
            with torch.no_grad():
                got = (layer(eye) - layer.get_base_layer()(eye)).T.double()
            torch.testing.assert_close(got, lora.modules[name].delta(), rtol=1e-4, atol=1e-6)
        with torch.no_grad():
            after = pipe.unet(x, 10, encoder_hidden_states=context).sample
        assert after.shape == (1, 4, 32, 32) and torch.isfinite(after).all()
        assert not torch.equal(before, after)
        # One denoising step of the pipeline itself, LoRA applied.
        latents = pipe(
            "a photo of sks person",
            num_inference_steps=1,
            guidance_scale=1.0,
            height=16,  # the cut-down VAE halves twice: 8 x 8 latents
            width=16,
            output_type="latent",
            generator=torch.Generator().manual_seed(4),
        ).images
        assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()
    finally:
        pipe.unload_lora_weights()


def test_sd15_single_file_loads_with_the_shipped_configs(tmp_path):
    """A full-size SD1.5 single file (random fp16 weights, ~2.1 GB) loads offline and runs."""
    from safetensors.torch import save_file

    from lorasynth.generate import load_base
    from tests.sd_checkpoint import sd15_original_keys

    keys, _ = sd15_original_keys()
    gen = torch.Generator().manual_seed(0)
    tensors = {k: (0.02 * torch.randn(v.shape, generator=gen)).half() for k, v in keys.items()}
    path = tmp_path / "sd15-random.safetensors"
    save_file(tensors, str(path))
    del tensors

    pipe = load_base(path)
    assert pipe.unet.dtype == torch.float32
    assert sum(p.numel() for p in pipe.unet.parameters()) == 859_520_964
    assert LoraLayout.from_unet(pipe.unet, "w2w", 1).size == 99_648
    assert pipe.tokenizer("sks person").input_ids == [49406, 48136, 2533, 49407]
    latents = pipe(
        "a photo of sks person",
        num_inference_steps=1,
        guidance_scale=1.0,
        height=64,
        width=64,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()
