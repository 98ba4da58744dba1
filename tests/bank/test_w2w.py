"""weights2weights import: its flat order mapped by name, at SD1.5's real dimensions."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lorasynth.bank import Bank
from lorasynth.bank.w2w import (
    W2W_ALPHA,
    import_w2w,
    loras_to_w2w_rows,
    w2w_key,
    w2w_rows_to_loras,
    w2w_segments,
)
from lorasynth.errors import LorasynthError
from lorasynth.lora import LoraLayout, flatten, unflatten
from tests.conftest import assert_one_line_error, random_lora, run_cli

SD15 = LoraLayout.sd15("w2w", 1)


def _w2w_rows_as_they_made_them(loras, tmp_path) -> torch.Tensor:
    """weights2weights' own procedure: PEFT adapter file -> load_peft_weights -> cat(flatten)."""
    from peft.utils.save_and_load import load_peft_weights

    rows = []
    for i, lora in enumerate(loras):
        folder = tmp_path / f"peft-{i}"
        folder.mkdir()
        tensors = {}
        for module, w in lora.modules.items():
            tensors[w2w_key(module, "lora_A")] = w.down.contiguous()
            tensors[w2w_key(module, "lora_B")] = w.up.contiguous()
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        weights = load_peft_weights(str(folder), device="cpu")
        rows.append(torch.cat([t.flatten() for t in weights.values()]))
    return torch.stack(rows)


def test_sd15_w2w_order_golden():
    segments = w2w_segments(SD15)
    assert len(segments) == 128 and segments[-1].stop == 99_648 == SD15.size
    head = [(s.key, s.start, s.stop, s.shape) for s in segments[:3]]
    block = "base_model.model.down_blocks.0.attentions.0.transformer_blocks.0"
    assert head == [
        (f"{block}.attn1.to_q.lora_A.weight", 0, 320, (1, 320)),
        (f"{block}.attn1.to_q.lora_B.weight", 320, 640, (320, 1)),
        (f"{block}.attn1.to_v.lora_A.weight", 640, 960, (1, 320)),
    ]
    # Cross-attention reads the 768-d text: lora_A of attn2.to_v is (1, 768).
    assert segments[6].key == f"{block}.attn2.to_v.lora_A.weight" and segments[6].shape == (1, 768)
    # down, then mid, then up (diffusers' own order has up before mid).
    starts = {
        b: min(s.start for s in segments if s.module.startswith(b))
        for b in ("down_blocks", "mid_block", "up_blocks")
    }
    # Per transformer block of width c: 4c (attn1 q, v) + 2c (attn2 q) + 768 + c (attn2 v).
    # Down: 2 x (3008 + 5248 + 9728) = 35,968; mid: 9,728; up: 3 x (9728 + 5248 + 3008).
    assert starts == {"down_blocks": 0, "mid_block": 35_968, "up_blocks": 45_696}
    assert segments[-1].key.startswith("base_model.model.up_blocks.3.attentions.2.")
    our_order = list(SD15.modules)
    assert our_order.index(
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_q"
    ) > our_order.index("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_v")


def test_w2w_order_equals_their_lorawtw_module_walk():
    """LoRAw2w.create_modules: named_modules reordered to down, mid, up; to_q/to_v children."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from lorasynth.lora.layout import load_unet_config

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(load_unet_config("sd15"))
    names = [n for n, _ in unet.named_modules()]
    modules = [m for _, m in unet.named_modules()]
    mid = next(i for i, n in enumerate(names) if "mid_block" in n)
    up = next(i for i, n in enumerate(names) if "up_block" in n)
    order = names[:up] + names[mid:] + names[up:mid]
    mods = modules[:up] + modules[mid:] + modules[up:mid]
    walk = []
    for name, module in zip(order, mods, strict=True):
        if module.__class__.__name__ == "Attention":
            for child, sub in module.named_modules():
                if isinstance(sub, torch.nn.Linear) and child in ("to_q", "to_v"):
                    walk.append(f"{name}.{child}")
    ours = []
    for s in w2w_segments(SD15):
        if s.module not in ours:
            ours.append(s.module)
    assert walk == ours


def test_rows_made_their_way_map_back_exactly(tmp_path):
    loras = [random_lora(SD15, seed=i, alpha=W2W_ALPHA) for i in range(2)]
    rows = _w2w_rows_as_they_made_them(loras, tmp_path)
    assert rows.shape == (2, 99_648)
    torch.testing.assert_close(loras_to_w2w_rows(loras, SD15), rows, rtol=0, atol=0)
    back = w2w_rows_to_loras(rows, SD15)
    for want, got in zip(loras, back, strict=True):
        for module, w in want.modules.items():
            assert torch.equal(got.modules[module].down, w.down)
            assert torch.equal(got.modules[module].up, w.up)
            assert got.modules[module].alpha == 27.0


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_import_w2w_real_dims(tmp_path, suffix):
    loras = [random_lora(SD15, seed=10 + i, alpha=W2W_ALPHA) for i in range(5)]
    rows = _w2w_rows_as_they_made_them(loras, tmp_path)
    src = tmp_path / f"all_weights{suffix}"
    if suffix == ".pt":
        torch.save(rows.to(torch.bfloat16).float(), src)
        loras = w2w_rows_to_loras(rows.to(torch.bfloat16).float(), SD15)
    else:
        save_file({"weights": rows}, str(src))
    bank = tmp_path / "bank"

    first = import_w2w(src, bank, limit=3, chunk=2, progress=False)
    assert first.imported == 3
    if suffix == ".pt":  # the explicit import command, as a user runs it; it resumes
        report = json.loads(run_cli("bank", "import-w2w", src, bank, "--json", check=True).stdout)
    else:
        report = import_w2w(src, bank, progress=False).to_dict()
    assert (report["imported"], report["skipped"], report["rows"]) == (2, 3, 5)
    assert report["layout_hash"] == SD15.hash and report["normaliser_hash"]

    store = Bank(bank)
    assert store.ids == [f"w2w-{i:05d}" for i in range(5)]
    assert store.extra["source"] == "weights2weights"
    torch.testing.assert_close(store.vectors(), torch.stack([flatten(x, SD15) for x in loras]))
    # The update a bank row makes is the weights2weights LoRA's: 27 * B @ A.
    module = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v"
    got = unflatten(store.vector("w2w-00004"), SD15).modules[module].delta()
    w = loras[4].modules[module]
    torch.testing.assert_close(got, 27.0 * w.up.double() @ w.down.double(), rtol=1e-5, atol=1e-7)


def test_import_w2w_refuses_bad_sources(tmp_path):
    wrong = tmp_path / "wrong.safetensors"
    save_file({"w": torch.zeros(2, 1000)}, str(wrong))
    with pytest.raises(LorasynthError, match="99,648"):
        import_w2w(wrong, tmp_path / "b")
    two = tmp_path / "two.safetensors"
    save_file({"a": torch.zeros(1, 3), "b": torch.zeros(1, 3)}, str(two))
    with pytest.raises(LorasynthError, match="expected one tensor"):
        import_w2w(two, tmp_path / "b2")

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, evil)
    proc = run_cli("bank", "import-w2w", evil, tmp_path / "b3")
    assert_one_line_error(proc, "evil.pt", "not loadable as plain tensors")
    assert "ran code" not in proc.stdout
    text = tmp_path / "w.txt"
    text.write_text("1 2 3")
    with pytest.raises(LorasynthError, match=r"all_weights\.pt"):
        import_w2w(text, tmp_path / "b4")
    with pytest.raises(LorasynthError, match="rank 1"):
        w2w_segments(SD15.with_rank(2))
    nan = tmp_path / "nan.safetensors"
    save_file({"w": torch.full((1, 99_648), float("nan"))}, str(nan))
    with pytest.raises(LorasynthError, match="row 0 holds NaN"):
        import_w2w(nan, tmp_path / "b5", progress=False)


def test_import_w2w_ids_from_identity_folders(tmp_path):
    rows = loras_to_w2w_rows([random_lora(SD15, seed=i) for i in range(3)], SD15)
    src = tmp_path / "all_weights.safetensors"
    save_file({"w": rows}, str(src))
    for name in ("2", "10", "1"):
        (tmp_path / "ids" / name).mkdir(parents=True)
    from lorasynth.bank.w2w import ids_from_folders

    names = ids_from_folders(tmp_path / "ids")
    assert names == ["1", "10", "2"]  # string order, as weights2weights concatenated them
    import_w2w(src, tmp_path / "bank", names=names, progress=False)
    assert Bank(tmp_path / "bank").ids == ["1", "10", "2"]
    with pytest.raises(LorasynthError, match="3 rows but 2 names"):
        import_w2w(src, tmp_path / "bank2", names=names[:2], progress=False)
