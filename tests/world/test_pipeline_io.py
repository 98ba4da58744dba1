"""Base models: diffusers folders and single-file checkpoints load offline, strictly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lorasynth.errors import LorasynthError
from lorasynth.generate import base_layout, check_fits_base, load_base
from lorasynth.lora import LoraLayout
from lorasynth.world.pipeline_io import (
    SD15_SHAPES,
    check_sd15_checkpoint,
    pipeline_unet_config,
    sd15_config_dir,
)
from tests.sd_checkpoint import (
    save_single_file,
    sd15_original_keys,
)


def _config_folder(pipe, folder):
    """The pipeline's configs and tokenizer without any weights (what a single file lacks)."""
    pipe.save_pretrained(str(folder))
    for weights in folder.rglob("*.safetensors"):
        weights.unlink()
    return folder


@pytest.fixture
def single_file(tiny_pipeline, tmp_path):
    path = save_single_file(tiny_pipeline, tmp_path / "tiny-sd.safetensors")
    return path, _config_folder(tiny_pipeline, tmp_path / "config")


def test_single_file_loads_the_same_weights(tiny_pipeline, single_file):
    path, config = single_file
    pipe = load_base(path, config=config)
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(tiny_pipeline, name).state_dict(), getattr(pipe, name).state_dict()
        assert want.keys() == got.keys(), name
        for key, value in want.items():
            assert torch.equal(value, got[key]), (name, key)
    assert pipe.tokenizer("a photo").input_ids == tiny_pipeline.tokenizer("a photo").input_ids


def test_half_precision_file_loads_as_float32(tiny_pipeline, tmp_path):
    path = save_single_file(tiny_pipeline, tmp_path / "half.safetensors", dtype=torch.float16)
    pipe = load_base(path, config=_config_folder(tiny_pipeline, tmp_path / "config"))
    assert pipe.unet.dtype == torch.float32
    want = tiny_pipeline.unet.conv_in.weight.half().float()
    assert torch.equal(pipe.unet.conv_in.weight, want)


def test_folder_and_file_bases_have_the_same_layout(tiny_pipeline, single_file, tmp_path):
    path, config = single_file
    folder = tmp_path / "pipe"
    tiny_pipeline.save_pretrained(str(folder))
    want = LoraLayout.from_unet(tiny_pipeline.unet, "w2w", 1)
    assert base_layout(folder) == want
    assert base_layout(path, config=config) == want
    check_fits_base(want, folder)
    check_fits_base(LoraLayout.from_unet(tiny_pipeline.unet, "attn-ff-conv", 1), folder)  # convs
    other = LoraLayout.sd15("w2w", 1)
    with pytest.raises(LorasynthError, match="does not fit base"):
        check_fits_base(other, folder)


def test_unrecognised_single_files_are_refused(tiny_pipeline, tmp_path):
    path = save_single_file(tiny_pipeline, tmp_path / "tiny.safetensors")
    with pytest.raises(LorasynthError, match=r"not a recognised SD1.5 checkpoint: .*input_blocks"):
        load_base(path)  # the shipped SD1.5 configs do not fit a tiny model
    sdxl = tmp_path / "sdxl.safetensors"
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
            "conditioner.embedders.1.model.positional_embedding": torch.zeros(77, 1280),
        },
        str(sdxl),
    )
    with pytest.raises(LorasynthError, match="SDXL"):
        load_base(sdxl)
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 4)}, str(lora))
    with pytest.raises(LorasynthError, match="not a Stable Diffusion single-file checkpoint"):
        load_base(lora)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04junk")
    with pytest.raises(LorasynthError, match="pickle"):
        load_base(ckpt)
    with pytest.raises(LorasynthError, match="no such pipeline folder or checkpoint"):
        load_base(tmp_path / "missing")


def test_sd15_recognition_matches_the_real_architecture():
    """SD15_SHAPES agrees with the original-layout keys of the shipped SD1.5 configs."""
    folder = sd15_config_dir()
    keys, unet = sd15_original_keys()
    shapes = {k: tuple(v.shape) for k, v in keys.items()}
    assert set(SD15_SHAPES) <= set(shapes)
    check_sd15_checkpoint(folder, shapes)  # passes
    # The shipped UNet config is the one LoraLayout.sd15 uses.
    packaged = json.loads((folder.parent / "unet-sd15.json").read_text())
    assert {k: v for k, v in pipeline_unet_config(folder).items() if not k.startswith("_")} == {
        k: v for k, v in packaged.items() if not k.startswith("_")
    }
    # A diffusers-converted key set round-trips through diffusers' own converter.
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    back = convert_ldm_unet_checkpoint(keys, dict(unet.config))
    assert set(back) == set(unet.state_dict())


def test_cli_generate_takes_a_single_file_base_error(tmp_path):
    from tests.conftest import assert_one_line_error, run_cli

    bad = tmp_path / "model.safetensors"
    save_file({"x": torch.zeros(2)}, str(bad))
    assert_one_line_error(
        run_cli("generate", "--base", bad, "--n", "1", "--out", tmp_path / "o"), "model.safetensors"
    )


def test_folder_with_pickled_weights_is_refused(tiny_pipeline, tmp_path):
    folder = tmp_path / "pipe"
    tiny_pipeline.save_pretrained(str(folder), safe_serialization=False)
    with pytest.raises(LorasynthError, match="could not load as a pipeline"):
        load_base(folder)


def test_folder_with_half_precision_weights_loads_as_float32(tiny_pipeline, tmp_path):
    from lorasynth.lora.safetensors_io import save_half_copy

    folder = tmp_path / "pipe"
    tiny_pipeline.save_pretrained(str(folder))
    for weights in folder.rglob("*.safetensors"):
        save_half_copy(weights, weights)
    pipe = load_base(folder)
    for name in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, name)
        assert module.dtype == torch.float32, name
        want = getattr(tiny_pipeline, name).state_dict()
        for key, value in module.state_dict().items():
            if value.is_floating_point():
                assert torch.equal(value, want[key].half().float()), (name, key)
