from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lorasynth.errors import LorasynthError
from lorasynth.lora import LoraLayout, inspect_lora, read_lora, write_lora
from lorasynth.lora.layout import kohya_name
from tests.conftest import random_lora

M = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


@pytest.fixture
def layout(tiny_unet):
    return LoraLayout.from_unet(tiny_unet, "w2w", 2)


def _kohya(path, tensors):
    save_file(tensors, str(path))
    return path


def _pair(rank=2, d_in=32, d_out=32):
    return torch.randn(rank, d_in), torch.randn(d_out, rank)


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_write_then_read_preserves_every_update(tmp_path, layout, fmt):
    lora = random_lora(layout, seed=1, alpha=3.0)
    back = read_lora(write_lora(tmp_path / "x.safetensors", lora, to=fmt))
    assert back.format == fmt
    assert list(back.modules) == list(layout.modules)
    for name, w in lora.modules.items():
        torch.testing.assert_close(back.modules[name].delta(), w.delta(), rtol=1e-5, atol=1e-6)


def test_metadata_has_modelspec_and_provenance(tmp_path, layout):
    lora = random_lora(layout)
    path = write_lora(
        tmp_path / "x.safetensors", lora, to="kohya", title="Ada", provenance={"seed": "7"}
    )
    meta = read_lora(path).metadata
    assert meta["modelspec.title"] == "Ada"
    assert meta["modelspec.architecture"] == "unknown/lora"  # tiny UNet: 24-d context
    assert meta["lorasynth.seed"] == "7"
    assert meta["lorasynth.layout_hash"] == layout.hash
    assert meta["ss_network_dim"] == "2"


def test_sd15_architecture_is_inferred(tmp_path):
    layout = LoraLayout.sd15("w2w", 1)
    lora = random_lora(layout)
    assert lora.architecture == "stable-diffusion-v1/lora"


def test_kohya_without_alpha_means_alpha_equals_rank(tmp_path):
    down, up = _pair()
    path = _kohya(
        tmp_path / "k.safetensors",
        {f"{kohya_name(M)}.lora_down.weight": down, f"{kohya_name(M)}.lora_up.weight": up},
    )
    assert read_lora(path).modules[M].alpha == 2.0


def test_peft_alpha_from_diffusers_metadata(tmp_path):
    down, up = _pair()
    path = tmp_path / "p.safetensors"
    save_file(
        {f"unet.{M}.lora_A.weight": down, f"unet.{M}.lora_B.weight": up},
        str(path),
        metadata={"lora_adapter_metadata": json.dumps({"r": 2, "lora_alpha": 8})},
    )
    lora = read_lora(path)
    assert lora.format == "peft" and lora.modules[M].alpha == 8.0


def test_peft_alpha_pattern_from_adapter_config(tmp_path):
    down, up = _pair()
    save_file(
        {f"base_model.model.{M}.lora_A.weight": down, f"base_model.model.{M}.lora_B.weight": up},
        str(tmp_path / "adapter_model.safetensors"),
    )
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"r": 2, "lora_alpha": 4, "alpha_pattern": {"attn1.to_q": 1}})
    )
    assert read_lora(tmp_path / "adapter_model.safetensors").modules[M].alpha == 1.0


# ---- strict validation: each case is refused with a message naming the key ----------------


def _expect(path, *needles):
    with pytest.raises(LorasynthError) as info:
        read_lora(path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, message


def test_unknown_key(tmp_path):
    down, up = _pair()
    k = kohya_name(M)
    path = _kohya(
        tmp_path / "k.safetensors",
        {f"{k}.lora_down.weight": down, f"{k}.lora_up.weight": up, f"{k}.dora_scale": up.clone()},
    )
    _expect(path, "unknown key", "dora_scale")


def test_missing_up_key(tmp_path):
    down, _ = _pair()
    path = tmp_path / "d.safetensors"
    save_file({f"unet.{M}.lora.down.weight": down}, str(path))
    _expect(path, "missing key", M)


def test_rank_mismatch(tmp_path):
    path = tmp_path / "d.safetensors"
    save_file(
        {
            f"unet.{M}.lora.down.weight": torch.randn(2, 32),
            f"unet.{M}.lora.up.weight": torch.randn(32, 3),
        },
        str(path),
    )
    _expect(path, "rank mismatch", f"unet.{M}.lora.down.weight")


def test_nan(tmp_path):
    down, up = _pair()
    up[0, 0] = float("nan")
    path = tmp_path / "d.safetensors"
    save_file({f"unet.{M}.lora.down.weight": down, f"unet.{M}.lora.up.weight": up}, str(path))
    _expect(path, "NaN or Inf", f"unet.{M}.lora.up.weight")


def test_inf_alpha(tmp_path):
    down, up = _pair()
    k = kohya_name(M)
    path = _kohya(
        tmp_path / "k.safetensors",
        {
            f"{k}.lora_down.weight": down,
            f"{k}.lora_up.weight": up,
            f"{k}.alpha": torch.tensor(float("inf")),
        },
    )
    _expect(path, "NaN or infinite", f"{k}.alpha")


def test_integer_dtype(tmp_path):
    path = tmp_path / "d.safetensors"
    save_file(
        {
            f"unet.{M}.lora.down.weight": torch.ones(2, 32, dtype=torch.int32),
            f"unet.{M}.lora.up.weight": torch.ones(32, 2),
        },
        str(path),
    )
    _expect(path, "dtype torch.int32", "lora.down.weight")


def test_conv_lora_reads_flat_with_its_kernel_and_writes_back_4d(tmp_path):
    path = tmp_path / "d.safetensors"
    down, up = torch.randn(2, 32, 3, 3), torch.randn(32, 2, 1, 1)
    save_file({f"unet.{M}.lora.down.weight": down, f"unet.{M}.lora.up.weight": up}, str(path))
    module = read_lora(path).modules[M]
    assert module.kernel == (3, 3) and module.down.shape == (2, 288) and module.up.shape == (32, 2)
    torch.testing.assert_close(module.delta().float(), (up[:, :, 0, 0] @ down.reshape(2, -1)))
    for fmt in ("diffusers", "kohya"):
        again = read_lora(write_lora(tmp_path / f"{fmt}.safetensors", read_lora(path), to=fmt))
        assert again.modules[M].kernel == (3, 3)
        torch.testing.assert_close(again.modules[M].delta(), module.delta())


@pytest.mark.parametrize(
    "up,needle",
    [(torch.ones(32, 2, 3, 3), "must be 1x1"), (torch.ones(32, 2), "both 4-D")],
)
def test_malformed_conv_lora_is_refused(tmp_path, up, needle):
    path = tmp_path / "d.safetensors"
    save_file(
        {f"unet.{M}.lora.down.weight": torch.ones(2, 32, 3, 3), f"unet.{M}.lora.up.weight": up},
        str(path),
    )
    _expect(path, needle, M)


def test_text_encoder_keys_are_refused(tmp_path):
    path = _kohya(
        tmp_path / "k.safetensors",
        {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(1, 4)},
    )
    _expect(path, "text-encoder", "lora_te_text_model")


def test_mixed_formats(tmp_path):
    down, up = _pair()
    path = tmp_path / "m.safetensors"
    save_file(
        {f"unet.{M}.lora.down.weight": down, f"{kohya_name(M)}.lora_up.weight": up}, str(path)
    )
    _expect(path, "mixes")


def test_non_lora_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"conv_in.weight": torch.ones(2, 2)}, str(path))
    _expect(path, "not a LoRA key", "conv_in.weight")


def test_layout_mismatch_names_the_module(tmp_path, layout):
    lora = random_lora(layout)
    other = LoraLayout.from_shapes({M: (32, 32, 2)})
    path = write_lora(tmp_path / "x.safetensors", lora)
    with pytest.raises(LorasynthError, match="layout mismatch"):
        read_lora(path, layout=other)
    lower = LoraLayout.from_shapes(
        {r.module: (r.in_features, r.out_features, 1) for r in layout.rows}
    )
    with pytest.raises(LorasynthError, match="exceeds the layout's rank 1"):
        read_lora(path, layout=lower)


def test_inspect_summary(tmp_path, layout):
    lora = random_lora(layout, alpha=1.0)
    summary = inspect_lora(read_lora(write_lora(tmp_path / "x.safetensors", lora, to="kohya")))
    assert summary == {
        "format": "kohya",
        "architecture": "unknown/lora",
        "modules": len(layout.rows),
        "rank": 2,
        "alpha": 1.0,
        "params": layout.size,
        "layout_hash": layout.hash,
    }


def test_diffusers_output_folds_scale(tmp_path, layout):
    lora = random_lora(layout, alpha=1.0)  # scale 1/2
    back = read_lora(write_lora(tmp_path / "x.safetensors", lora, to="diffusers"))
    assert back.modules[M].alpha == back.modules[M].rank
    torch.testing.assert_close(back.modules[M].up, lora.modules[M].up * 0.5)
