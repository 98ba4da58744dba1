from __future__ import annotations

import json

import pytest
import torch

from lorasynth.errors import LorasynthError
from lorasynth.lora.layout import (
    LoraLayout,
    kohya_name,
    load_unet_config,
    module_from_kohya,
    unet_order_key,
)


def test_sd15_w2w_rank1_has_99648_values():
    layout = LoraLayout.sd15("w2w", 1)
    assert layout.size == 99_648
    assert len(layout.rows) == 64


def test_sd15_attn_rank4_size_and_rows():
    layout = LoraLayout.sd15("attn", 4)
    assert len(layout.rows) == 128
    assert layout.size == 4 * sum(r.in_features + r.out_features for r in layout.rows)
    first = layout.rows[0]
    assert first.module == "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert (first.in_features, first.out_features) == (320, 320)


def test_hash_is_stable_golden_value():
    # Pinned: changing how layouts are hashed invalidates every bank and checkpoint.
    assert LoraLayout.sd15("w2w", 1).hash == "9b2a39b5e8bf4f2a"


def test_hash_depends_on_rank_and_order():
    layout = LoraLayout.sd15("w2w", 1)
    assert layout.with_rank(2).hash != layout.hash
    assert LoraLayout(tuple(reversed(layout.rows))).hash != layout.hash


def test_json_roundtrip():
    layout = LoraLayout.sd15("attn", 2)
    assert LoraLayout.from_json(layout.to_json()) == layout


def test_shapes_sort_in_named_modules_order(tiny_unet):
    """A layout read from a file (unordered keys) equals the one built from the UNet."""
    all_linear = {
        name: (m.in_features, m.out_features, 1)
        for name, m in tiny_unet.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    expected = [n for n, m in tiny_unet.named_modules() if isinstance(m, torch.nn.Linear)]
    shuffled = dict(sorted(all_linear.items(), key=lambda kv: hash(kv[0]) % 97))
    assert list(LoraLayout.from_shapes(shuffled).modules) == expected


def test_sd15_file_order_matches_unet_order():
    for preset in ("w2w", "attn"):
        layout = LoraLayout.sd15(preset, 1)
        shapes = {r.module: (r.in_features, r.out_features, r.rank) for r in reversed(layout.rows)}
        assert LoraLayout.from_shapes(shapes) == layout


def test_kohya_names_invert_without_a_layout():
    modules = LoraLayout.sd15("attn", 1).modules
    for module in modules:
        assert module_from_kohya(kohya_name(module)) == module
    assert module_from_kohya("lora_unet_down_blocks_0_resnets_1_time_emb_proj") == (
        "down_blocks.0.resnets.1.time_emb_proj"
    )


def test_unknown_preset_is_a_clear_error(tiny_unet):
    with pytest.raises(LorasynthError, match="unknown layout preset 'qkv'"):
        LoraLayout.from_unet(tiny_unet, "qkv")


def test_unet_order_key_puts_up_blocks_before_mid_block():
    names = ["mid_block.a", "up_blocks.0.a", "down_blocks.10.a", "down_blocks.2.a"]
    assert sorted(names, key=unet_order_key) == [
        "down_blocks.2.a",
        "down_blocks.10.a",
        "up_blocks.0.a",
        "mid_block.a",
    ]


def test_shipped_config_loads():
    assert load_unet_config("sd15")["cross_attention_dim"] == 768
    with pytest.raises(LorasynthError):
        load_unet_config("nope")


def test_sdxl_layout_and_file_order():
    layout = LoraLayout.sdxl("w2w", 1)
    assert len(layout.rows) == 280  # 70 transformer blocks x (q, v of attn1 and attn2)
    assert layout.size == 725_760
    shapes = {r.module: (r.in_features, r.out_features, r.rank) for r in reversed(layout.rows)}
    assert LoraLayout.from_shapes(shapes) == layout
    cross = next(r for r in layout.rows if r.module.endswith("attn2.to_v"))
    assert cross.in_features == 2048


def test_attn_ff_adds_the_feed_forward_layers():
    attn, attn_ff = LoraLayout.sd15("attn", 1), LoraLayout.sd15("attn-ff", 1)
    extra = [r for r in attn_ff.rows if r not in attn.rows]
    assert extra and all(r.module.endswith((".ff.net.0.proj", ".ff.net.2")) for r in extra)
    # SD1.5: 16 transformer blocks, each a GEGLU in-projection (d -> 8d) and an out (4d -> d).
    assert len(extra) == 32 and attn_ff.size > attn.size


def test_attn_ff_conv_adds_resnet_convolutions_with_their_kernel(tiny_unet):
    layout = LoraLayout.from_unet(tiny_unet, "attn-ff-conv", 2)
    convs = [r for r in layout.rows if r.is_conv]
    assert convs and all(r.module.endswith((".conv1", ".conv2")) for r in convs)
    modules = dict(tiny_unet.named_modules())
    for row in convs:
        conv = modules[row.module]
        assert row.kernel == (3, 3) and row.in_features == conv.in_channels * 9
        assert row.down_shape == (2, conv.in_channels, 3, 3)
    # Convolution rows keep their kernel through JSON and through shapes read from a file.
    assert LoraLayout.from_json(layout.to_json()) == layout
    shapes = {r.module: (r.in_features, r.out_features, r.rank, r.kernel) for r in layout.rows}
    assert LoraLayout.from_shapes(shapes) == layout
    # The linear rows serialise exactly as before (four entries), so linear hashes are stable.
    assert all(len(row) == 4 for row in json.loads(LoraLayout.sd15("attn-ff", 1).to_json()))
