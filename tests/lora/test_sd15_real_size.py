"""The real SD1.5 UNet architecture (random weights, no download): layout, LoRA load, one step."""

from __future__ import annotations

import pytest
import torch

from lorasynth.lora import LoraLayout, flatten, read_lora, unflatten, write_lora
from lorasynth.lora.layout import load_unet_config


@pytest.mark.slow
def test_sd15_unet_takes_a_synthesized_w2w_lora(tmp_path):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    config = {k: v for k, v in load_unet_config("sd15").items() if not k.startswith("_")}
    unet = UNet2DConditionModel(**config).eval()
    layout = LoraLayout.from_unet(unet, "w2w", 1)
    assert layout.size == 99_648 and layout == LoraLayout.sd15("w2w", 1)

    raw = 0.01 * torch.randn(layout.size, generator=torch.Generator().manual_seed(1))
    vector = flatten(unflatten(raw, layout), layout)  # what a synthesizer emits: canonical
    path = write_lora(tmp_path / "subject.safetensors", unflatten(vector, layout), to="kohya")
    torch.testing.assert_close(flatten(read_lora(path), layout), vector, rtol=1e-5, atol=1e-7)

    x = torch.randn(1, 4, 32, 32)
    context = torch.randn(1, 77, 768)
    with torch.no_grad():
        before = unet(x, 10, encoder_hidden_states=context).sample
        from diffusers import StableDiffusionPipeline

        state, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
        unet.load_lora_adapter(state, prefix="unet", network_alphas=alphas)
        after = unet(x, 10, encoder_hidden_states=context).sample
    assert after.shape == (1, 4, 32, 32) and torch.isfinite(after).all()
    assert not torch.equal(before, after)
