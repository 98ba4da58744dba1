"""Loading a (mini-world or real) Stable Diffusion pipeline, offline: a diffusers folder or a
single-file checkpoint in the original SD/kohya key layout (what A1111 and ComfyUI load).

A single file carries weights only; diffusers normally fetches the matching configs from the hub.
Here the SD1.5 configs ship with lorasynth (`lorasynth/configs/sd15/`) and the CLIP tokenizer is
built from open-clip-torch's BPE vocabulary, so nothing is downloaded. A file is accepted as
SD1.5 only when the shapes of its key tensors match (checked from the header, before loading).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from lorasynth.errors import LorasynthError

_UNET = "model.diffusion_model."
# Tensors whose shapes identify an SD1.x checkpoint (UNet in/out, cross-attention width,
# time embedding, CLIP ViT-L/14 text encoder, the KL VAE).
SD15_SHAPES: dict[str, tuple[int, ...]] = {
    _UNET + "input_blocks.0.0.weight": (320, 4, 3, 3),
    _UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    _UNET + "middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
    _UNET + "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    _UNET + "time_embed.0.weight": (1280, 320),
    _UNET + "out.2.weight": (4, 320, 3, 3),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
    "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
    "first_stage_model.decoder.conv_out.weight": (3, 128, 3, 3),
}
# Families recognised only to name them in the error.
_OTHER_FAMILIES = {
    "conditioner.embedders.": "an SDXL checkpoint (SDXL generation is not supported yet)",
    "cond_stage_model.model.": "an SD2.x checkpoint (OpenCLIP text encoder; not supported)",
}


def sd15_config_dir() -> Path:
    """The shipped diffusers config folder of Stable Diffusion 1.5 (no weights)."""
    return Path(str(resources.files("lorasynth.configs").joinpath("sd15")))


def load_pipeline(path: str | os.PathLike[str], config: str | os.PathLike[str] | None = None):
    """A StableDiffusionPipeline from a diffusers folder or a single-file .safetensors checkpoint.

    `config` (single files only) is a diffusers folder with the matching component configs; by
    default the shipped SD1.5 configs, after checking that the file is an SD1.5 checkpoint.
    Never touches a hub.
    """
    _quiet()
    path = Path(path)
    if path.is_dir():
        if config is not None:
            raise LorasynthError(f"{path}: a pipeline folder has its own configs; drop the config")
        return _load_folder(path)
    if path.is_file():
        return load_single_file(path, config)
    raise LorasynthError(
        f"{path}: no such pipeline folder or checkpoint file; give 'mini', a diffusers folder "
        "or a .safetensors checkpoint"
    )


def _load_folder(path: Path):
    import torch
    from diffusers import StableDiffusionPipeline

    if not (path / "model_index.json").is_file():
        raise LorasynthError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(path),
            local_files_only=True,
            use_safetensors=True,  # .bin weights are pickles: refused
            dtype=torch.float32,  # shipped weights are float16; CPU inference wants float32
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise LorasynthError(f"{path}: could not load as a pipeline: {_first_line(exc)}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (no tensor data is read)."""
    from lorasynth.lora.safetensors_io import read_header

    header, _ = read_header(path)  # refuses pickles, truncation and oversized headers
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def check_sd15_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise unless `shapes` (from `path`) are those of an SD1.5-family single-file checkpoint."""
    if not any(k.startswith(_UNET) for k in shapes):
        family = next(
            (v for k, v in _OTHER_FAMILIES.items() if any(s.startswith(k) for s in shapes)), None
        )
        what = (
            family
            or "not a Stable Diffusion single-file checkpoint (no model.diffusion_model.* tensors)"
        )
        raise LorasynthError(f"{path}: {what}")
    for prefix, family in _OTHER_FAMILIES.items():
        if any(k.startswith(prefix) for k in shapes):
            raise LorasynthError(f"{path}: {family}; only SD1.5-family checkpoints load")
    for key, expected in SD15_SHAPES.items():
        found = shapes.get(key)
        if found != expected:
            shown = "missing" if found is None else f"shape {list(found)}"
            raise LorasynthError(
                f"{path}: not a recognised SD1.5 checkpoint: {key} is {shown}, expected "
                f"{list(expected)} (a diffusers folder or a config folder works for other models)"
            )


def pipeline_unet_config(
    path: str | os.PathLike[str], config: str | os.PathLike[str] | None = None
) -> dict:
    """The UNet config of what load_pipeline(path, config) would load, without any weights."""
    import json

    path = Path(path)
    if path.is_dir():
        folder = path
    elif path.is_file():
        folder = _single_file_config(path, checkpoint_shapes(path), config)
    else:
        return load_pipeline(path, config)  # raises the one error message for a bad path
    file = folder / "unet" / "config.json"
    if not file.is_file():
        raise LorasynthError(f"{folder}: no unet/config.json; not a diffusers pipeline folder")
    return json.loads(file.read_text())


def _single_file_config(
    path: Path, shapes: dict[str, tuple[int, ...]], config: str | os.PathLike[str] | None
) -> Path:
    if config is None:
        check_sd15_checkpoint(path, shapes)
        return sd15_config_dir()
    if not any(k.startswith(_UNET) for k in shapes):
        raise LorasynthError(f"{path}: no model.diffusion_model.* tensors; not an SD checkpoint")
    config = Path(config)
    if not (config / "model_index.json").is_file():
        raise LorasynthError(f"{config}: not a diffusers config folder (no model_index.json)")
    return config


def load_single_file(path: Path, config: str | os.PathLike[str] | None = None):
    """A pipeline from one original-layout .safetensors file, with local configs only."""
    import torch
    from diffusers import StableDiffusionPipeline

    config = _single_file_config(path, checkpoint_shapes(path), config)
    extra = {}
    if not (config / "tokenizer").is_dir():
        extra["tokenizer"] = clip_tokenizer()
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(config),
            local_files_only=True,
            dtype=torch.float32,  # half-precision files too: CPU inference wants float32
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **extra,
        )
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise LorasynthError(
            f"{path}: could not load as a pipeline with configs {config}: {_first_line(exc)}"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def clip_tokenizer():
    """OpenAI CLIP's tokenizer (SD1.5's): the full BPE vocabulary, 77 tokens."""
    from lorasynth.world.tokenizer import FULL_MERGES, build_tokenizer

    return build_tokenizer(FULL_MERGES, model_max_length=77)


def _quiet() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
