"""Files lorasynth writes load in diffusers and change each targeted weight by (alpha/r) B A."""

from __future__ import annotations

import pytest
import torch

from lorasynth.lora import LoraLayout, flatten, read_lora, unflatten, write_lora
from tests.conftest import random_lora


def _effective_delta(module: torch.nn.Module) -> torch.Tensor:
    """dW that a (possibly LoRA-wrapped) layer applies, measured through its forward.

    A convolution's dW is flattened like a layout row (out, in_channels * kh * kw): each basis
    input is one in-channel/kernel-position impulse, read at the output's centre pixel.
    """
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    if isinstance(base, torch.nn.Conv2d):
        kh, kw = base.kernel_size
        n = base.in_channels * kh * kw
        impulses = torch.eye(n).reshape(n, base.in_channels, kh, kw)
        # Unpadded kh x kw inputs: the single output pixel is sum(weight * input).
        with torch.no_grad():
            probe = _conv_without_padding(module, impulses) - _conv_without_padding(base, impulses)
        return probe[:, :, 0, 0].T.double()
    eye = torch.eye(base.in_features, dtype=torch.float32)
    with torch.no_grad():
        return (module(eye) - base(eye)).T.double()


def _conv_without_padding(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a (possibly wrapped) conv on kh x kw inputs with its padding temporarily zero."""
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    saved = [c.padding for c in convs]
    try:
        for c in convs:
            c.padding = (0, 0)
        return module(x)
    finally:
        for c, p in zip(convs, saved, strict=True):
            c.padding = p


def _modules(unet) -> dict[str, torch.nn.Module]:
    return dict(unet.named_modules())


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
@pytest.mark.parametrize(
    "preset,rank,alpha", [("w2w", 1, 1.0), ("attn", 4, 2.0), ("attn-ff-conv", 2, 1.0)]
)
def test_written_file_loads_in_diffusers_with_exact_update(
    tiny_pipeline, tmp_path, fmt, preset, rank, alpha
):
    layout = LoraLayout.from_unet(tiny_pipeline.unet, preset, rank)
    lora = random_lora(layout, seed=3, alpha=alpha)
    path = write_lora(tmp_path / f"lora-{fmt}.safetensors", lora, to=fmt)

    tiny_pipeline.load_lora_weights(str(path), adapter_name="subject")

    modules = _modules(tiny_pipeline.unet)
    for name, w in lora.modules.items():
        expected = (alpha / rank) * (w.up.double() @ w.down.double())
        got = _effective_delta(modules[name])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=name)
    # Untargeted linear layers are untouched.
    for name, module in modules.items():
        if isinstance(module, torch.nn.Linear) and name.endswith("attn1.to_k") and preset == "w2w":
            assert _effective_delta(module).abs().max() == 0


def test_fused_weights_equal_base_plus_update(tiny_pipeline, tmp_path):
    layout = LoraLayout.from_unet(tiny_pipeline.unet, "attn", 2)
    lora = random_lora(layout, seed=5, alpha=0.5)
    before = {m: _modules(tiny_pipeline.unet)[m].weight.detach().clone() for m in layout.modules}
    path = write_lora(tmp_path / "k.safetensors", lora, to="kohya")

    tiny_pipeline.load_lora_weights(str(path))
    tiny_pipeline.fuse_lora()

    for name, w in lora.modules.items():
        layer = _modules(tiny_pipeline.unet)[name]
        weight = (layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer).weight
        torch.testing.assert_close(
            weight.double(), before[name].double() + w.delta(), rtol=1e-4, atol=1e-5
        )


def test_canonical_roundtrip_file_makes_the_same_images_update(tiny_pipeline, tmp_path):
    """A LoRA -> vector -> LoRA file applies the same dW as the original."""
    layout = LoraLayout.from_unet(tiny_pipeline.unet, "attn", 4)
    lora = random_lora(layout, seed=9, alpha=1.0)
    rebuilt = unflatten(flatten(lora, layout), layout)
    path = write_lora(tmp_path / "c.safetensors", rebuilt, to="diffusers")
    assert read_lora(path).layout() == layout

    tiny_pipeline.load_lora_weights(str(path))
    for name, w in lora.modules.items():
        got = _effective_delta(_modules(tiny_pipeline.unet)[name])
        torch.testing.assert_close(got, w.delta(), rtol=1e-4, atol=1e-5)


def test_diffusers_peft_save_reads_back(tiny_unet, tmp_path):
    """A PEFT adapter saved by peft itself (alpha in adapter_config.json) reads exactly."""
    import copy

    from peft import LoraConfig, get_peft_model

    unet = copy.deepcopy(tiny_unet)
    config = LoraConfig(r=2, lora_alpha=6, target_modules=["to_q", "to_v"], init_lora_weights=False)
    model = get_peft_model(unet, config)
    model.save_pretrained(str(tmp_path / "adapter"))

    lora = read_lora(tmp_path / "adapter" / "adapter_model.safetensors")
    assert lora.format == "peft"
    modules = dict(model.named_modules())
    for name, w in lora.modules.items():
        assert w.alpha == 6.0 and w.rank == 2
        got = _effective_delta(modules[f"base_model.model.{name}"])
        torch.testing.assert_close(got, w.delta(), rtol=1e-4, atol=1e-5)
    # Same update through any format gives the same canonical vector.
    layout = lora.layout()
    kohya = read_lora(write_lora(tmp_path / "k.safetensors", lora, to="kohya"))
    torch.testing.assert_close(flatten(kohya, layout), flatten(lora, layout), rtol=1e-5, atol=1e-6)


def test_kohya_file_at_sd15_names_what_uis_load(tmp_path):
    """lora_unet_ names, explicit alpha per module, modelspec as kohya writes it for SD1 LoRAs;
    diffusers' own kohya converter takes every key (it raises on leftovers)."""
    from diffusers import StableDiffusionPipeline

    from lorasynth.lora.layout import kohya_name
    from lorasynth.lora.safetensors_io import load_tensors

    layout = LoraLayout.sd15("w2w", 1)
    lora = random_lora(layout, seed=2, alpha=27.0)
    path = write_lora(tmp_path / "subject.safetensors", lora, to="kohya", title="Subject")
    tensors, meta = load_tensors(path)
    assert len(tensors) == 3 * 64 and all(k.startswith("lora_unet_") for k in tensors)
    stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert kohya_name(layout.modules[0]) == stem
    assert tensors[f"{stem}.lora_down.weight"].shape == (1, 320)
    assert tensors[f"{stem}.lora_up.weight"].shape == (320, 1)
    assert tensors[f"{stem}.alpha"].shape == () and float(tensors[f"{stem}.alpha"]) == 27.0
    assert {k: meta[k] for k in meta if k.startswith("modelspec.")} == {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": "Subject",
        "modelspec.resolution": "512x512",
        "modelspec.prediction_type": "epsilon",
    }
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_alpha"] == "27.0"
    assert meta["ss_network_dim"] == "1" and meta["ss_base_model_version"] == "sd_v1"

    state, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
    assert len(state) == 2 * 64 and len(alphas) == 64
    # diffusers' kohya reader names the down weight the attention-processor way.
    key = (
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight"
    )
    assert torch.equal(state[key], lora.modules[layout.modules[0]].down)
    assert set(alphas.values()) == {27.0}


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_bank_export_loads_into_a_pipeline_with_the_same_update(tiny_pipeline, tmp_path, fmt):
    """ingest -> bank -> `bank export` -> diffusers load_lora_weights: dW of the original file."""
    from tests.conftest import run_cli

    layout = LoraLayout.from_unet(tiny_pipeline.unet, "attn", 2)
    originals = {f"s{i}": random_lora(layout, seed=20 + i, alpha=3.0) for i in range(3)}
    for name, lora in originals.items():
        write_lora(tmp_path / "loras" / f"{name}.safetensors", lora, to="kohya")
    bank = tmp_path / "bank"
    run_cli("bank", "ingest", tmp_path / "loras", bank, "--workers", "1", check=True)
    out = tmp_path / f"s1-{fmt}.safetensors"
    run_cli("bank", "export", bank, "s1", out, "--to", fmt, check=True)

    tiny_pipeline.load_lora_weights(str(out), adapter_name="exported")
    modules = _modules(tiny_pipeline.unet)
    for name, w in originals["s1"].modules.items():
        torch.testing.assert_close(
            _effective_delta(modules[name]), w.delta(), rtol=1e-4, atol=1e-5, msg=name
        )
