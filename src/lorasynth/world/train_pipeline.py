"""Train the mini-world Stable Diffusion on renders: the VAE first, then UNet + text encoder.

Stage `vae`: AutoencoderKL on renders (L1 + L2 + L1 of image gradients + a small KL), then
the latent scaling_factor (1 / std of latents) is measured and stored in the VAE config, as SD
does. Stage `unet`: UNet and CLIP text encoder (from scratch) trained jointly with the
diffusion loss on (latent of a render, caption naming its nuisances), 10% empty captions so
classifier-free guidance works, EMA of both. Renders are made on the fly from identity seeds
>= 1_000_000 (seeds below that belong to the LoRA bank). Each batch is a pure function of
(seed, step), so a resumed run sees exactly the batches an uninterrupted one would.

    python -m lorasynth.world.train_pipeline --stage vae --steps 2500 --out build/mini-world/pipeline
    python -m lorasynth.world.train_pipeline --stage unet --steps 10000 --out ... --resume
    python -m lorasynth.world.train_pipeline --stage evaluate --out ...
    python -m lorasynth.world.train_pipeline --stage export --out ...   # -> assets/mini-world

Layout of OUT: vae/ (diffusers), vae-state.safetensors, vae-run.json, unet-state.safetensors,
unet-run.json, pipeline/ (diffusers, EMA weights), samples/*.png, metrics.json.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline
from tqdm.auto import tqdm

from lorasynth.atomic import write_json_atomic
from lorasynth.checkpoint import load_training_state, save_training_state
from lorasynth.domains import DOMAIN_KEY, get_domain
from lorasynth.errors import LorasynthError
from lorasynth.lora.safetensors_io import save_half_copy
from lorasynth.world.attributes import BACKGROUNDS, Nuisance
from lorasynth.world.pipeline_build import (
    PipelineConfig,
    assemble_pipeline,
    make_sample_scheduler,
    make_text_encoder,
    make_tokenizer,
    make_train_scheduler,
    make_unet,
    make_vae,
    parameter_counts,
)
from lorasynth.world.prompt_fidelity import (
    classify_background,
    frechet_distance_images,
    pixel_features,
    prompt_fidelity,
)

FIRST_IDENTITY = 1_000_000  # identities below belong to the LoRA bank: never train on them
EVAL_FIRST_IDENTITY = 9_000_000  # held-out identities for metrics
MAX_IDENTITIES = EVAL_FIRST_IDENTITY - FIRST_IDENTITY
_BATCH_DOMAIN = 0x5D1  # keeps batch streams apart from other users of (seed, step)
_UNUSED_STEPS = 10**12


# ----------------------------------------------------------------------------- data


def render_batch(
    identities: Sequence[int],
    nuisances: Sequence[Nuisance],
    subject: str | None = None,
    domain: str = "faces",
) -> tuple[np.ndarray, list[str]]:
    """Renders (B, 32, 32, 3) uint8 of a domain's subjects and their captions (subject phrase
    default: the domain's, e.g. "a photo of a person")."""
    dom = get_domain(domain)
    attrs = [dom.identity_attributes(int(s)) for s in identities]
    images = dom.render_many(attrs, list(nuisances), size=32)
    subject = subject or dom.generic_prompt
    return images, [dom.caption(n, subject=subject) for n in nuisances]


def training_batch(
    seed: int,
    step: int,
    batch_size: int,
    num_identities: int,
    first: int = FIRST_IDENTITY,
    domain: str = "faces",
) -> tuple[np.ndarray, list[str], list[str]]:
    """Batch `step` of a run: (images, captions, background names); a function of its arguments."""
    if not 1 <= num_identities <= MAX_IDENTITIES:
        raise LorasynthError(
            f"num_identities must be in [1, {MAX_IDENTITIES}], got {num_identities}"
        )
    if first < FIRST_IDENTITY:
        raise LorasynthError(
            f"pipeline identities start at {FIRST_IDENTITY} (lower seeds are the LoRA bank's), "
            f"got {first}"
        )
    rng = np.random.default_rng([_BATCH_DOMAIN, seed, step])
    identities = first + rng.integers(num_identities, size=batch_size)
    nuisance_seeds = rng.integers(2**62, size=batch_size)
    dom = get_domain(domain)
    nuisances = [
        dom.sample_nuisance(dom.nuisance_rng(int(s), int(n)))
        for s, n in zip(identities, nuisance_seeds, strict=True)
    ]
    images, captions = render_batch(identities, nuisances, domain=dom.name)
    return images, captions, [n.background for n in nuisances]


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def _step_generator(seed: int, step: int, domain: int) -> torch.Generator:
    words = np.random.SeedSequence([_BATCH_DOMAIN, domain, seed, step]).generate_state(2)
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


def _warmup_lr(base: float, warmup: int) -> Callable[[int], float]:
    return lambda step: base * min(1.0, (step + 1) / max(warmup, 1))


# ----------------------------------------------------------------------------- VAE


@dataclass(frozen=True)
class VaeTrainConfig:
    """Options of the VAE stage (written to vae-run.json)."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 100
    l2_weight: float = 1.0
    grad_weight: float = 0.5  # L1 of horizontal/vertical differences: keeps 1-px features crisp
    kl_weight: float = 1e-6  # per latent value, as in SD's autoencoder
    num_identities: int = 50_000
    scale_samples: int = 2048  # renders used to measure the latent std
    eval_samples: int = 512  # held-out renders for the reconstruction metrics
    checkpoint_seconds: float = 180.0
    seed: int = 0
    domain: str = "faces"  # whose renders (lorasynth.domains)


def _image_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def vae_loss(
    vae: AutoencoderKL, x: torch.Tensor, cfg: VaeTrainConfig, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction (L1 + L2 + gradient L1) + KL; x in [-1, 1]."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample(generator=generator)).sample
    l1 = (recon - x).abs().mean()
    l2 = (recon - x).square().mean()
    grad = sum(
        (a - b).abs().mean() for a, b in zip(_image_grad(recon), _image_grad(x), strict=True)
    )
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    loss = l1 + cfg.l2_weight * l2 + cfg.grad_weight * grad + cfg.kl_weight * kl
    return loss, {"l1": l1.item(), "l2": l2.item(), "kl": kl.item()}


@torch.no_grad()
def measure_scaling_factor(vae: AutoencoderKL, cfg: VaeTrainConfig) -> float:
    """1 / std of latents of fresh renders (SD's scaling_factor)."""
    latents = []
    for i in range(0, cfg.scale_samples, 256):
        # Steps past any run's length: renders the training loop never saw.
        n = min(256, cfg.scale_samples - i)
        images, _, _ = training_batch(
            cfg.seed, _UNUSED_STEPS + i, n, cfg.num_identities, domain=cfg.domain
        )
        posterior = vae.encode(to_model_range(images)).latent_dist
        latents.append(posterior.sample(generator=_step_generator(cfg.seed, i, 3)))
    return float(1.0 / torch.cat(latents).std())


@torch.no_grad()
def vae_metrics(vae: AutoencoderKL, n: int = 512, domain: str = "faces") -> dict[str, float]:
    """Reconstruction PSNR (dB, 0-255 scale) and L1 on held-out renders."""
    images, _, _ = training_batch(0, 0, n, 1000, first=EVAL_FIRST_IDENTITY, domain=domain)
    x = to_model_range(images)
    recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    mse = ((recon - x) / 2).square().mean().item()
    return {"psnr_db": float(10 * np.log10(1.0 / mse)), "l1": float((recon - x).abs().mean())}


def train_vae(
    out_dir: Path, steps: int, cfg: VaeTrainConfig, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train the VAE to `steps` total steps; writes OUT/vae/ and OUT/vae-run.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / "vae-state.safetensors"
    torch.manual_seed(cfg.seed)  # initialisation only; batches and noise come from (seed, step)
    vae = make_vae(cfg.pipeline.vae).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    start, seconds = _resume_or_fresh(
        state_path, resume, {"vae": vae}, {"adamw": opt}, _config_json(cfg)
    )
    lr_at = _warmup_lr(cfg.lr, cfg.warmup)
    last_save, t0 = time.monotonic(), time.monotonic()
    bar = tqdm(total=steps, initial=start, disable=not progress, desc="vae", mininterval=10)
    for step in range(start, steps):
        images, _, _ = training_batch(
            cfg.seed, step, cfg.batch_size, cfg.num_identities, domain=cfg.domain
        )
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss, parts = vae_loss(vae, to_model_range(images), cfg, _step_generator(cfg.seed, step, 1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", l1=f"{parts['l1']:.4f}", refresh=False)
        if time.monotonic() - last_save > cfg.checkpoint_seconds:
            seconds = _save(state_path, step + 1, {"vae": vae}, {"adamw": opt}, cfg, seconds, t0)
            last_save, t0 = time.monotonic(), time.monotonic()
    bar.close()
    seconds = _save(state_path, steps, {"vae": vae}, {"adamw": opt}, cfg, seconds, t0)
    vae.eval()
    vae.register_to_config(scaling_factor=measure_scaling_factor(vae, cfg))
    vae.save_pretrained(out_dir / "vae", safe_serialization=True)
    record = {
        "stage": "vae",
        "steps": steps,
        "seconds": round(seconds, 1),
        "config": _config_json(cfg),
        "parameters": sum(p.numel() for p in vae.parameters()),
        "scaling_factor": vae.config.scaling_factor,
        "metrics": vae_metrics(vae, cfg.eval_samples, cfg.domain),
    }
    write_json_atomic(out_dir / "vae-run.json", record)
    return record


# ----------------------------------------------------------------------------- UNet


@dataclass(frozen=True)
class UNetTrainConfig:
    """Options of the UNet + text encoder stage (written to unet-run.json)."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    batch_size: int = 32
    lr: float = 4e-4
    weight_decay: float = 0.01
    warmup: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    num_identities: int = 50_000
    checkpoint_seconds: float = 180.0
    sample_every: int = 1000  # steps between sample grids (0: never)
    seed: int = 0
    domain: str = "faces"  # whose renders (lorasynth.domains)


class Ema:
    """Exponential moving average of a module's floating-point state, warmed up over steps."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int, decay: float) -> None:
        d = min(decay, (1 + step) / (10 + step))
        ema = self.module.state_dict()
        for key, value in module.state_dict().items():
            if value.is_floating_point():
                ema[key].lerp_(value, 1.0 - d)
            else:
                ema[key].copy_(value)


def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str]) -> torch.Tensor:
    """Prompt embeddings exactly as StableDiffusionPipeline.encode_prompt makes them."""
    ids = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def diffusion_loss(
    unet, text_encoder, tokenizer, scheduler, latents: torch.Tensor, prompts: Sequence[str],
    generator: torch.Generator,
) -> torch.Tensor:  # fmt: skip
    """MSE between the UNet's prediction and its target (eps or v) at uniform timesteps."""
    # Draws come from the CPU generator (the same on any device), then move to the latents.
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    t = t.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    elif scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)
    else:
        raise LorasynthError(f"unsupported prediction type {scheduler.config.prediction_type!r}")
    pred = unet(noisy, t, encode_prompts(tokenizer, text_encoder, prompts)).sample
    return F.mse_loss(pred, target)


def load_vae(out_dir: Path) -> AutoencoderKL:
    """OUT/vae from the VAE stage (frozen, eval mode)."""
    path = Path(out_dir) / "vae"
    if not (path / "config.json").is_file():
        raise LorasynthError(f"{path}: no trained VAE; run the `vae` stage first")
    return AutoencoderKL.from_pretrained(path).eval().requires_grad_(False)


def train_unet(
    out_dir: Path,
    steps: int,
    cfg: UNetTrainConfig,
    resume: bool = False,
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train UNet + text encoder to `steps` total steps; writes OUT/pipeline (EMA weights).

    `device` (e.g. "cuda") is not part of the config: a run may move between machines.
    """
    out_dir = Path(out_dir)
    state_path = out_dir / "unet-state.safetensors"
    vae = load_vae(out_dir).to(device)
    tokenizer = make_tokenizer(cfg.pipeline.text)
    scheduler = make_train_scheduler(cfg.pipeline.scheduler)
    torch.manual_seed(cfg.seed)  # initialisation only
    unet = make_unet(cfg.pipeline.unet, cfg.pipeline.vae, cfg.pipeline.text).train().to(device)
    text_encoder = make_text_encoder(cfg.pipeline.text, tokenizer).train().to(device)
    ema_unet, ema_text = Ema(unet), Ema(text_encoder)
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    modules = {
        "unet": unet,
        "text_encoder": text_encoder,
        "ema_unet": ema_unet.module,
        "ema_text_encoder": ema_text.module,
    }
    start, seconds = _resume_or_fresh(
        state_path, resume, modules, {"adamw": opt}, _config_json(cfg)
    )
    lr_at = _warmup_lr(cfg.lr, cfg.warmup)
    last_save, t0 = time.monotonic(), time.monotonic()
    bar = tqdm(total=steps, initial=start, disable=not progress, desc="unet", mininterval=10)
    smooth, done = None, start
    try:
        for step in range(start, steps):
            images, captions, _ = training_batch(
                cfg.seed, step, cfg.batch_size, cfg.num_identities, domain=cfg.domain
            )
            gen = _step_generator(cfg.seed, step, 2)
            drop = torch.rand(len(captions), generator=gen) < cfg.caption_dropout
            prompts = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
            with torch.no_grad():
                posterior = vae.encode(to_model_range(images).to(device)).latent_dist
                latents = posterior.sample(generator=gen) * vae.config.scaling_factor
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = diffusion_loss(unet, text_encoder, tokenizer, scheduler, latents, prompts, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            ema_unet.update(unet, step, cfg.ema_decay)
            ema_text.update(text_encoder, step, cfg.ema_decay)
            done = step + 1
            smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{smooth:.4f}", refresh=False)
            if cfg.sample_every and done % cfg.sample_every == 0:
                # A grid to look at, and a loadable snapshot of the EMA pipeline so far.
                pipe = _ema_pipeline(vae, ema_text.module, tokenizer, ema_unet.module, cfg)
                grid = out_dir / "samples" / f"step-{done:07d}.png"
                save_sample_grid(pipe, grid, domain=cfg.domain)
                save_pipeline(pipe, out_dir / "pipeline")
            if time.monotonic() - last_save > cfg.checkpoint_seconds:
                seconds = _save(state_path, done, modules, {"adamw": opt}, cfg, seconds, t0)
                last_save, t0 = time.monotonic(), time.monotonic()
                tqdm.write(f"step {done} loss {smooth:.4f} seconds {seconds:.0f}", file=sys.stderr)
    except KeyboardInterrupt:
        steps = done  # stop cleanly: keep what was trained
        tqdm.write(f"interrupted at step {steps}; saving", file=sys.stderr)
    bar.close()
    seconds = _save(state_path, steps, modules, {"adamw": opt}, cfg, seconds, t0)
    pipe = _ema_pipeline(vae, ema_text.module, tokenizer, ema_unet.module, cfg)
    save_pipeline(pipe, out_dir / "pipeline")
    record = {
        "stage": "unet",
        "steps": steps,
        "seconds": round(seconds, 1),
        "final_loss_smoothed": smooth,
        "config": _config_json(cfg),
        "parameters": parameter_counts(pipe),
    }
    write_json_atomic(out_dir / "unet-run.json", record)
    return record


def save_pipeline(pipe: StableDiffusionPipeline, path: Path) -> Path:
    """save_pretrained (safetensors) into a fresh folder, then swap it in: readers never see half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _ema_pipeline(
    vae, text_encoder, tokenizer, unet, cfg: UNetTrainConfig
) -> StableDiffusionPipeline:
    return assemble_pipeline(
        vae, text_encoder, tokenizer, unet, make_sample_scheduler(cfg.pipeline.scheduler)
    )


# ----------------------------------------------------------------------------- shared helpers


def _config_json(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _resume_or_fresh(
    state_path: Path, resume: bool, modules: dict, optimizers: dict, config: dict[str, Any]
) -> tuple[int, float]:
    """(start step, seconds so far); refuses to resume a run with a different config."""
    if not resume:
        return 0, 0.0
    if not state_path.is_file():
        raise LorasynthError(f"{state_path}: nothing to resume; run without --resume first")
    state = load_training_state(state_path, modules=modules, optimizers=optimizers)
    stored = {DOMAIN_KEY: "faces", **state["config"]}  # runs from before domains: faces
    if stored != config:
        changed = sorted(k for k in config if stored.get(k) != config[k])
        raise LorasynthError(
            f"{state_path}: was trained with another config (differs in {changed}); "
            f"resume with the same options or start a new --out"
        )
    return state["step"], float(state["extra"].get("seconds", 0.0))


def _save(path: Path, step: int, modules, optimizers, cfg, seconds: float, t0: float) -> float:
    seconds += time.monotonic() - t0
    save_training_state(
        path,
        step=step,
        modules=modules,
        optimizers=optimizers,
        config=_config_json(cfg),
        extra={"seconds": seconds},
    )
    return seconds


# ----------------------------------------------------------------------------- evaluation


def grid_prompts(domain: str = "faces") -> list[str]:
    """One row per background, eight captioned variants each (faces: plain, smiling, glasses,
    hat, left, right, eyes closed, plain; see each domain's `grid_nuisances`)."""
    dom = get_domain(domain)
    rows = []
    for bg in BACKGROUNDS:
        rows.extend(dom.caption(n, subject=dom.generic_prompt) for n in dom.grid_nuisances(bg))
    return rows


def image_grid(images: np.ndarray, columns: int, scale: int = 2) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one grid image, upscaled by `scale` (nearest) for viewing."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + 1), columns * (w + 1), 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = im
    return grid.repeat(scale, 0).repeat(scale, 1)


def generate(
    pipe: StableDiffusionPipeline,
    prompts: Sequence[str],
    seed: int = 0,
    num_inference_steps: int = 25,
    guidance_scale: float = 4.0,
    guidance_rescale: float = 0.0,
    batch_size: int = 100,
) -> np.ndarray:
    """(N, 32, 32, 3) uint8 images, one per prompt; deterministic in `seed`."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        gens = [
            torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(len(chunk))
        ]
        with torch.no_grad():
            images = pipe(
                chunk,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                guidance_rescale=guidance_rescale,
                generator=gens,
                height=32,
                width=32,
                output_type="np",
            ).images
        out.append((np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.concatenate(out)


def save_sample_grid(
    pipe: StableDiffusionPipeline, path: Path, seed: int = 0, domain: str = "faces", **kwargs
) -> Path:
    """A PNG grid of `grid_prompts(domain)` (rows: backgrounds; columns: variants)."""
    from PIL import Image

    images = generate(pipe, grid_prompts(domain), seed=seed, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, columns=8)).save(path)
    return path


def mini_eval_embed(domain: str = "faces") -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """The domain's judge (faces: `mini-eval`) as an embed function if it is built, else raw
    8x8 pixels."""
    from lorasynth.faces import mini

    dom = get_domain(domain)
    path = dom.embedder_path(dom.judge)
    try:
        embedder = mini.load_embedder(dom.judge if dom.name == "faces" else path)
    except LorasynthError:
        return pixel_features, "pixels-8x8"
    return (lambda images: mini.embed_images(embedder, images).numpy()), embedder.embedder_id


def evaluate_pipeline(
    pipe: StableDiffusionPipeline,
    num_samples: int = 500,
    seed: int = 0,
    num_inference_steps: int = 25,
    guidance_scale: float = 4.0,
    guidance_rescale: float = 0.0,
    embed: Callable[[np.ndarray], np.ndarray] | None = None,
    embed_name: str = "pixels-8x8",
    domain: str = "faces",
) -> dict[str, Any]:
    """Prompt fidelity and Frechet distance of generations vs held-out renders of the same captions.

    Captions come from renders of held-out identities; `frechet_real_vs_real` (a second real
    set) is the floor the generated distance should be read against.
    """
    embed = embed or pixel_features
    real, captions, backgrounds = training_batch(
        seed, 0, num_samples, 100_000, EVAL_FIRST_IDENTITY, domain
    )
    real2, _, _ = training_batch(seed, 1, num_samples, 100_000, EVAL_FIRST_IDENTITY, domain)
    fake = generate(pipe, captions, seed, num_inference_steps, guidance_scale, guidance_rescale)
    return {
        "num_samples": num_samples,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "guidance_rescale": guidance_rescale,
        "prompt_fidelity": prompt_fidelity(fake, backgrounds),
        "classifier_accuracy_on_renders": prompt_fidelity(real, backgrounds),
        "frechet_space": embed_name,
        "frechet_generated_vs_real": frechet_distance_images(fake, real, embed),
        "frechet_real_vs_real": frechet_distance_images(real2, real, embed),
        "background_confusions": _confusions(classify_background(fake), backgrounds),
    }


def _confusions(predicted: Sequence[str], wanted: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p, w in zip(predicted, wanted, strict=True):
        if p != w:
            out[f"{w}->{p}"] = out.get(f"{w}->{p}", 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# ----------------------------------------------------------------------------- entry points


def build_vae(
    out_dir: Path,
    steps: int = 2500,
    resume: bool = False,
    progress: bool = True,
    seed: int = 0,
    domain: str = "faces",
    pipeline: PipelineConfig | None = None,
) -> dict[str, Any]:
    """The `vae` stage with default settings (what `lorasynth world build --stage vae` runs)."""
    cfg = VaeTrainConfig(pipeline=pipeline or PipelineConfig(), seed=seed, domain=domain)
    return train_vae(Path(out_dir), steps, cfg, resume, progress)


def build_unet(
    out_dir: Path,
    steps: int = 10_000,
    resume: bool = False,
    progress: bool = True,
    seed: int = 0,
    domain: str = "faces",
    pipeline: PipelineConfig | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """The `unet` stage with default settings (what `lorasynth world build --stage unet` runs)."""
    cfg = UNetTrainConfig(pipeline=pipeline or PipelineConfig(), seed=seed, domain=domain)
    return train_unet(Path(out_dir), steps, cfg, resume, progress, device)


def evaluate_run(
    out_dir: Path, num_samples: int = 500, domain: str = "faces", **kwargs
) -> dict[str, Any]:
    """Evaluate OUT/pipeline; writes OUT/metrics.json and OUT/samples/final.png."""
    path = Path(out_dir) / "pipeline"
    if not (path / "model_index.json").is_file():
        raise LorasynthError(f"{path}: no trained pipeline; run the `unet` stage first")
    pipe = StableDiffusionPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    embed, name = mini_eval_embed(domain)
    metrics = evaluate_pipeline(
        pipe, num_samples, embed=embed, embed_name=name, domain=domain, **kwargs
    )
    metrics[DOMAIN_KEY] = get_domain(domain).name
    save_sample_grid(pipe, Path(out_dir) / "samples" / "final.png", domain=domain)
    write_json_atomic(Path(out_dir) / "metrics.json", metrics)
    return metrics


def export_run(
    out_dir: Path, dest: Path, extra: dict[str, Any] | None = None, half: bool = True
) -> Path:
    """Copy OUT/pipeline to DEST/pipeline (weights as float16 when `half`: half the bytes; the
    loaders upcast); write DEST/pipeline-build.json (config, metrics, extra)."""
    out_dir, dest = Path(out_dir), Path(dest)
    records = {}
    for name in ("vae-run.json", "unet-run.json", "metrics.json"):
        path = out_dir / name
        if not path.is_file():
            raise LorasynthError(f"{path}: missing; run the vae, unet and evaluate stages first")
        records[name.removesuffix(".json")] = json.loads(path.read_text())
    target = dest / "pipeline"
    tmp = dest / "pipeline.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(out_dir / "pipeline", tmp)
    if half:
        for weights in sorted(tmp.rglob("*.safetensors")):
            save_half_copy(weights, weights)
    for config in sorted(tmp.rglob("config.json")):
        # from_pretrained records where a component was loaded from (a build/ path on this
        # machine); the shipped folder must not carry it.
        record = json.loads(config.read_text())
        if record.pop("_name_or_path", None) is not None:
            write_json_atomic(config, record)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    record = {
        **records,
        "pipeline_bytes": size,
        "stored_dtype": "float16" if half else "float32",
        **(extra or {}),
    }
    write_json_atomic(dest / "pipeline-build.json", record)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True, choices=["vae", "unet", "evaluate", "export"])
    parser.add_argument("--out", required=True, type=Path, help="run folder")
    parser.add_argument(
        "--steps", type=int, default=None, help="total steps (vae 2500, unet 10000)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--samples", type=int, default=500, help="evaluate: generated images")
    parser.add_argument("--guidance", type=float, default=1.5, help="evaluate: CFG scale")
    parser.add_argument("--dest", type=Path, default=None, help="export: default assets/mini-world")
    parser.add_argument("--domain", default="faces", help="faces or products")
    parser.add_argument("--device", default="cpu", help="unet: torch device, e.g. cuda")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # SIGTERM stops like Ctrl-C: the unet stage then saves its checkpoint and pipeline.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        domain = get_domain(args.domain)
        if args.stage == "vae":
            steps = args.steps or 2500
            record = build_vae(args.out, steps, args.resume, True, args.seed, domain.name)
        elif args.stage == "unet":
            steps = args.steps or 10_000
            record = build_unet(
                args.out, steps, args.resume, True, args.seed, domain.name, device=args.device
            )
        elif args.stage == "evaluate":
            record = evaluate_run(args.out, args.samples, domain.name, guidance_scale=args.guidance)
        else:
            record = {"exported": str(export_run(args.out, args.dest or domain.root()))}
    except LorasynthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
