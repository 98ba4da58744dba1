"""The `lorasynth lora` contract, run as a user runs it."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, safe_open

from lorasynth.lora import LoraLayout, flatten, read_lora, write_lora
from tests.conftest import assert_one_line_error, random_lora, run_cli


@pytest.fixture
def kohya_file(tmp_path, tiny_unet):
    layout = LoraLayout.from_unet(tiny_unet, "attn", 2)
    return write_lora(
        tmp_path / "ada.safetensors", random_lora(layout, alpha=1.0), to="kohya"
    ), layout


def test_inspect_json(kohya_file):
    path, layout = kohya_file
    proc = run_cli("lora", "inspect", path, "--json", check=True)
    summary = json.loads(proc.stdout)
    assert summary == {
        "format": "kohya",
        "architecture": "unknown/lora",
        "modules": len(layout.rows),
        "rank": 2,
        "alpha": 1.0,
        "params": layout.size,
        "layout_hash": layout.hash,
    }


def test_convert_and_canonicalize(kohya_file, tmp_path):
    path, layout = kohya_file
    out = tmp_path / "ada-diffusers.safetensors"
    run_cli("lora", "convert", path, out, "--to", "diffusers", check=True)
    assert all(k.startswith("unet.") for k in load_file(str(out)))

    vec = tmp_path / "ada-vector.safetensors"
    run_cli("lora", "canonicalize", out, vec, check=True)
    with safe_open(str(vec), "pt") as fh:
        assert fh.metadata()["layout_hash"] == layout.hash
        vector = fh.get_tensor("vector")
    torch.testing.assert_close(vector, flatten(read_lora(path), layout))

    back = tmp_path / "back.safetensors"
    run_cli("lora", "uncanonicalize", vec, back, "--to", "kohya", check=True)
    for name, w in read_lora(path).modules.items():
        torch.testing.assert_close(
            read_lora(back).modules[name].delta(), w.delta(), rtol=1e-4, atol=1e-5
        )


def test_bad_inputs_give_one_line_errors(tmp_path, kohya_file):
    path, _ = kohya_file
    pickled = tmp_path / "model.safetensors"
    pickled.write_bytes(pickle.dumps([1, 2]))
    assert_one_line_error(run_cli("lora", "inspect", pickled), "pickle", str(pickled))
    assert_one_line_error(run_cli("lora", "inspect", tmp_path / "none.safetensors"), "no such file")
    assert_one_line_error(
        run_cli("lora", "convert", path, tmp_path / "o.safetensors", "--to", "ckpt"), "--to"
    )
    assert_one_line_error(
        run_cli("lora", "convert", path, tmp_path / "o.pt", "--to", "kohya"), ".safetensors"
    )
    assert_one_line_error(run_cli("lora", "inspect"), "Missing argument")
