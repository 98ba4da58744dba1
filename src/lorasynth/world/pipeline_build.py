"""The mini-world's Stable Diffusion: configs and constructors of a small but real SD pipeline.

A diffusers StableDiffusionPipeline in every respect (AutoencoderKL, UNet2DConditionModel with
cross-attention, CLIPTextModel, CLIP BPE tokenizer, DDIM sampler), sized for 32x32 RGB faces:
the VAE maps 32x32x3 to 16x16x4 latents and the UNet denoises those. Everything here builds
random weights from configs; train_pipeline.py trains them.

Choices, measured on one CPU core (fwd+bwd+AdamW, batch 32, 16x16x4 latents):
- UNet (32, 64, 64) channels, one resnet per level, cross-attention at 16x16, 8x8 and 4x4:
  1.83M parameters, ~400 ms a step; without attention at 16x16 it is 1.74M and ~260 ms.
  The 16x16 level keeps one attention head (four heads cost ~560 ms) because LoRAs of the bank
  act on attention projections only, and identity lives in fine features (eyes, lips, brows).
- Zero terminal SNR (rescaled scaled_linear betas) with v-prediction and trailing timesteps.
  With SD 1.5's schedule (eps, leading) the background colour leaks through the last noise
  level in training but not at sampling; measured A/B, same architecture, 1000 steps of
  batch 32, 200 held-out captions, 25 DDIM steps: background prompt fidelity 100% / 100%
  (CFG 2 / 4) with v + zero SNR against 18.5% / 28.5% with eps + SD's schedule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from lorasynth.errors import LorasynthError
from lorasynth.world.tokenizer import DEFAULT_MAX_LENGTH, DEFAULT_MERGES, build_tokenizer

IMAGE_SIZE = 32


@dataclass(frozen=True)
class VaeConfig:
    """AutoencoderKL: 32x32x3 in [-1, 1] <-> (32 / 2^(levels-1))^2 x latent_channels."""

    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16
    mid_block_add_attention: bool = False  # measured: +20% step time for no visible gain
    image_size: int = IMAGE_SIZE

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class UNetConfig:
    """UNet2DConditionModel on latents; `attention` says which levels carry cross-attention."""

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    attention: tuple[bool, ...] = (True, True, True)
    # Heads per level (diffusers calls this `attention_head_dim`, a historical misnomer).
    attention_heads: tuple[int, ...] = (1, 4, 4)
    layers_per_block: int = 1
    norm_num_groups: int = 16


@dataclass(frozen=True)
class TextConfig:
    """CLIP tokenizer (first `num_merges` CLIP merges) and a small CLIPTextModel from scratch."""

    num_merges: int = DEFAULT_MERGES
    max_length: int = DEFAULT_MAX_LENGTH
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 512


@dataclass(frozen=True)
class SchedulerConfig:
    """Noise schedule shared by training (DDPM) and sampling (DDIM)."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: str = "v_prediction"
    rescale_betas_zero_snr: bool = True
    timestep_spacing: str = "trailing"


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that fixes the architecture of the mini-world pipeline."""

    vae: VaeConfig = field(default_factory=VaeConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    text: TextConfig = field(default_factory=TextConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PipelineConfig:
        """Inverse of `to_dict`; unknown or missing sections or fields are an error."""
        parts = {"vae": VaeConfig, "unet": UNetConfig, "text": TextConfig}
        parts["scheduler"] = SchedulerConfig
        if set(values) != set(parts):
            raise LorasynthError(
                f"pipeline config needs sections {sorted(parts)}, got {sorted(values)}"
            )
        out = {}
        for name, kind in parts.items():
            known = {f.name for f in dataclasses.fields(kind)}
            unknown = sorted(set(values[name]) - known)
            if unknown:
                raise LorasynthError(f"pipeline config [{name}]: unknown fields {unknown}")
            out[name] = kind(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in values[name].items()}
            )
        return cls(**out)


# A few-thousand-parameter version for tests: same code paths, seconds to train.
TINY_CONFIG = PipelineConfig(
    vae=VaeConfig(block_out_channels=(8, 16), norm_num_groups=8),
    unet=UNetConfig(
        block_out_channels=(16, 32), attention=(False, True), attention_heads=(2, 2),
        norm_num_groups=8,
    ),
    text=TextConfig(
        num_merges=1000, max_length=48, hidden_size=32, num_layers=1, num_heads=2,
        intermediate_size=64,
    ),
)  # fmt: skip


def make_vae(cfg: VaeConfig) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL (scaling_factor 1 until training measures it)."""
    levels = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.image_size,
        scaling_factor=1.0,
        mid_block_add_attention=cfg.mid_block_add_attention,
    )


def make_unet(cfg: UNetConfig, vae: VaeConfig, text: TextConfig) -> UNet2DConditionModel:
    """A randomly initialised UNet2DConditionModel for `vae`'s latents and `text`'s embeddings."""
    levels = len(cfg.block_out_channels)
    if not len(cfg.attention) == len(cfg.attention_heads) == levels:
        raise LorasynthError(
            f"unet config: attention {cfg.attention} and attention_heads {cfg.attention_heads} "
            f"need one entry per level ({levels})"
        )
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DConditionModel(
        sample_size=vae.latent_size,
        in_channels=vae.latent_channels,
        out_channels=vae.latent_channels,
        layers_per_block=cfg.layers_per_block,
        block_out_channels=cfg.block_out_channels,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=text.hidden_size,
        attention_head_dim=cfg.attention_heads,
        norm_num_groups=cfg.norm_num_groups,
    )


def make_tokenizer(cfg: TextConfig) -> CLIPTokenizer:
    """The CLIP BPE tokenizer of `cfg` (deterministic)."""
    return build_tokenizer(cfg.num_merges, cfg.max_length)


def make_text_encoder(cfg: TextConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A randomly initialised CLIPTextModel for `tokenizer`'s vocabulary."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            max_position_embeddings=cfg.max_length,
            projection_dim=cfg.hidden_size,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def _scheduler_kwargs(cfg: SchedulerConfig) -> dict[str, Any]:
    return {
        "num_train_timesteps": cfg.num_train_timesteps,
        "beta_schedule": cfg.beta_schedule,
        "beta_start": cfg.beta_start,
        "beta_end": cfg.beta_end,
        "prediction_type": cfg.prediction_type,
        "rescale_betas_zero_snr": cfg.rescale_betas_zero_snr,
        "timestep_spacing": cfg.timestep_spacing,
        "clip_sample": False,
    }


def make_train_scheduler(cfg: SchedulerConfig) -> DDPMScheduler:
    """The forward process used in training (add_noise, get_velocity)."""
    return DDPMScheduler(**_scheduler_kwargs(cfg))


def make_sample_scheduler(cfg: SchedulerConfig) -> DDIMScheduler:
    """The sampler stored in the pipeline (DDIM on the same betas)."""
    # steps_offset only shifts "leading" spacing; 1 is what diffusers expects of SD pipelines.
    return DDIMScheduler(**_scheduler_kwargs(cfg), set_alpha_to_one=False, steps_offset=1)


def assemble_pipeline(
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    unet: UNet2DConditionModel,
    scheduler: DDIMScheduler,
) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline from parts, without safety checker or feature extractor."""
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_pipeline(
    cfg: PipelineConfig = PipelineConfig(), seed: int = 0
) -> StableDiffusionPipeline:
    """A complete pipeline with random weights (initialisation fixed by `seed`)."""
    tokenizer = make_tokenizer(cfg.text)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = make_vae(cfg.vae)
        text_encoder = make_text_encoder(cfg.text, tokenizer)
        unet = make_unet(cfg.unet, cfg.vae, cfg.text)
    return assemble_pipeline(
        vae, text_encoder, tokenizer, unet, make_sample_scheduler(cfg.scheduler)
    )


def parameter_counts(pipe: StableDiffusionPipeline) -> dict[str, int]:
    """Parameters per component."""
    return {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("vae", "text_encoder", "unet")
    }
