"""Test helper: write a diffusers StableDiffusionPipeline as an original-layout single file.

The inverse of what `StableDiffusionPipeline.from_single_file` reads (CompVis/kohya key layout:
`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`), for any
SD1.x-style config (number of blocks and layers per block are read from the config), so tests
can build tiny checkpoints. Each key is mapped by an explicit prefix table; leftovers raise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}


def _unet_prefixes(config: dict) -> dict[str, str]:
    """diffusers module prefix -> original prefix, from the UNet's block structure."""
    per = config["layers_per_block"] + 1
    n = len(config["block_out_channels"])
    table = dict(_UNET_TOP)
    for i, kind in enumerate(config["down_block_types"]):
        for j in range(per - 1):
            table[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{per * i + j + 1}.0."
            if kind.startswith("CrossAttn"):
                table[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{per * i + j + 1}.1."
        if i < n - 1:
            table[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{per * (i + 1)}.0.op."
    for i, kind in enumerate(config["up_block_types"]):
        attn = kind.startswith("CrossAttn")
        for j in range(per):
            table[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{per * i + j}.0."
            if attn:
                table[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{per * i + j}.1."
        if i < n - 1:
            table[f"up_blocks.{i}.upsamplers.0."] = (
                f"output_blocks.{per * i + per - 1}.{2 if attn else 1}."
            )
    table["mid_block.attentions.0."] = "middle_block.1."
    table["mid_block.resnets.0."] = "middle_block.0."
    table["mid_block.resnets.1."] = "middle_block.2."
    return table


def _rename(key: str, table: dict[str, str], inner: dict[str, str] | None = None) -> str:
    for hf, sd in sorted(table.items(), key=lambda kv: -len(kv[0])):
        if key.startswith(hf):
            rest = key[len(hf) :]
            if inner and ".resnets." in hf:
                for a, b in inner.items():
                    if rest.startswith(a):
                        rest = b + rest[len(a) :]
            return sd + rest
    raise KeyError(f"no mapping for {key}")


def unet_to_original(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    table = _unet_prefixes(dict(unet.config))
    return {
        "model.diffusion_model." + _rename(k, table, _UNET_RESNET): v
        for k, v in unet.state_dict().items()
    }


def vae_to_original(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    n = len(vae.config.block_out_channels)
    per = vae.config.layers_per_block
    table = {
        "encoder.conv_in.": "encoder.conv_in.",
        "encoder.conv_out.": "encoder.conv_out.",
        "encoder.conv_norm_out.": "encoder.norm_out.",
        "decoder.conv_in.": "decoder.conv_in.",
        "decoder.conv_out.": "decoder.conv_out.",
        "decoder.conv_norm_out.": "decoder.norm_out.",
        "quant_conv.": "quant_conv.",
        "post_quant_conv.": "post_quant_conv.",
    }
    for part in ("encoder", "decoder"):
        table[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
        for j in range(2):
            table[f"{part}.mid_block.resnets.{j}."] = f"{part}.mid.block_{j + 1}."
    for i in range(n):
        for j in range(per):
            table[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        for j in range(per + 1):
            table[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{n - 1 - i}.block.{j}."
        if i < n - 1:
            table[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
            table[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{n - 1 - i}.upsample."
    attn = {
        "group_norm.": "norm.",
        "to_q.": "q.",
        "to_k.": "k.",
        "to_v.": "v.",
        "to_out.0.": "proj_out.",
    }
    out = {}
    for k, v in vae.state_dict().items():
        key = _rename(k, table)
        if ".mid.attn_1." in key:
            head, rest = key.split(".mid.attn_1.")
            for a, b in attn.items():
                if rest.startswith(a):
                    rest = b + rest[len(a) :]
                    if b != "norm." and rest.endswith("weight"):
                        v = v[:, :, None, None]  # linear -> 1x1 conv, as the original stores it
            key = f"{head}.mid.attn_1.{rest}"
        key = key.replace("conv_shortcut.", "nin_shortcut.")
        out["first_stage_model." + key] = v
    return out


def text_encoder_to_original(text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    # The original layout nests the model under `text_model.`; transformers 5 drops that level.
    return {
        "cond_stage_model.transformer."
        + ("" if k.startswith("text_model.") else "text_model.")
        + k: v
        for k, v in text_encoder.state_dict().items()
    }


def sd15_original_keys() -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """Every original-layout key of full-size SD1.5 (from the shipped configs) as an empty
    (meta) tensor, its shape without memory; and the empty diffusers UNet they came from."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorasynth.world.pipeline_io import sd15_config_dir

    folder = sd15_config_dir()
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    keys = {**unet_to_original(unet), **vae_to_original(vae), **text_encoder_to_original(text)}
    return keys, unet


def save_single_file(pipe, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """The pipeline's UNet, VAE and text encoder in the original SD single-file layout."""
    tensors = {
        **unet_to_original(pipe.unet),
        **vae_to_original(pipe.vae),
        **text_encoder_to_original(pipe.text_encoder),
    }
    save_file({k: v.detach().to(dtype).contiguous() for k, v in tensors.items()}, str(path))
    return path
