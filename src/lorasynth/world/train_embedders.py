"""Train and judge the mini-world embedders (ArcFace loss on renders), resumably.

    python -m lorasynth.world.train_embedders --name mini-eval --steps 4000 \
        --out assets/mini-world/embedders/ [--resume]

Each embedder belongs to one domain (lorasynth.domains): mini-arcface and mini-eval see faces,
mini-style and mini-style-eval see products; the same loss, loop and metrics serve both.

Training faces are rendered on the fly from identity seeds MODEL_TRAINING_START + i (i < K),
each with a fresh random nuisance; held-out evaluation identities are EVAL_START + j, and the
attribute regressor learns from REGRESSOR_START + j. No range meets the bank's seeds (< 1e6).
Batch t is a pure function of (seed, t), so a resumed run sees the same data as an unbroken one.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lorasynth.atomic import write_json_atomic
from lorasynth.checkpoint import load_training_state, save_training_state
from lorasynth.domains import DOMAIN_KEY, embedder_domain, get_domain
from lorasynth.errors import LorasynthError
from lorasynth.faces.mini import (
    PRESETS,
    REGRESSOR_NAME,
    AttributeRegressor,
    EmbedderConfig,
    MiniEmbedder,
    RegressorConfig,
    count_parameters,
    embed_images,
    save_embedder,
    save_regressor,
)
from lorasynth.paths import build_dir
from lorasynth.world.identities import MODEL_TRAINING_START

REGRESSOR_START = 2_000_000  # identities the attribute regressor is fitted on
REGRESSOR_IDENTITIES = 8000
EVAL_START = 9_000_000  # held-out identities for every reported embedder metric


@dataclass(frozen=True)
class TrainConfig:
    """How one embedder is trained (written next to its weights)."""

    steps: int = 2500
    batch_size: int = 128
    # K training identities (seeds MODEL_TRAINING_START + [0, K)). Each class centre needs a
    # couple of hundred samples to settle, so K is sized to the step budget: ~200 per identity.
    num_identities: int = 1500
    optimizer: str = "adamw"  # "adamw", or "sgd" (Nesterov momentum 0.9)
    lr: float = 2e-3  # peak; linear warmup then cosine to zero
    head_lr: float | None = 5e-2  # the class centres' peak lr (None: lr); higher learns faster
    weight_decay: float = 5e-4
    warmup_steps: int = 100
    margin: float = 0.3  # ArcFace additive angular margin (radians)
    scale: float = 16.0  # ArcFace logit scale
    margin_warmup: float = 0.1  # share of the steps over which the margin ramps up from 0
    max_shift: int = 2  # augmentation: random translation by up to this many pixels
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.num_identities < 2:
            raise LorasynthError(f"train config needs steps >= 1, batch >= 2, K >= 2: {self}")


# Two different seeds (different init and data order) on top of two different architectures.
TRAINING: dict[str, TrainConfig] = {
    "mini-arcface": TrainConfig(seed=1),
    "mini-eval": TrainConfig(seed=2, steps=4000, num_identities=3000),
    "mini-style": TrainConfig(seed=3),
    "mini-style-eval": TrainConfig(seed=4, steps=4000, num_identities=3000),
}

# The products domain's embedders: the faces architectures under other names (other seeds).
STYLE_PRESETS: dict[str, EmbedderConfig] = {
    style: replace(PRESETS[face], name=style)
    for style, face in (("mini-style", "mini-arcface"), ("mini-style-eval", "mini-eval"))
}


def embedder_names() -> list[str]:
    return sorted({*PRESETS, *STYLE_PRESETS})


def embedder_config(name: str) -> EmbedderConfig:
    """The architecture of a named embedder (faces presets first, then products)."""
    if name in PRESETS:
        return PRESETS[name]
    if name in STYLE_PRESETS:
        return STYLE_PRESETS[name]
    raise LorasynthError(f"unknown embedder {name!r}; choose one of {embedder_names()}")


class ArcFaceLoss(nn.Module):
    """Additive angular margin softmax (Deng et al. 2019): s * cos(theta_y + m) on the target.

    Class centres are unit vectors; embeddings must already be unit vectors. Where theta_y + m
    would pass pi the logit keeps falling linearly instead (the usual "cos(pi - m)" guard),
    so the target logit stays monotone in theta_y.
    """

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.4):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, embed_dim) / math.sqrt(embed_dim))
        self.scale = scale
        self.margin = margin

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor, margin: float | None = None):
        m = self.margin if margin is None else margin
        cos = embeddings @ F.normalize(self.weight, dim=1).T
        target = cos.gather(1, labels[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
        sin = (1.0 - target * target).sqrt()
        with_margin = target * math.cos(m) - sin * math.sin(m)
        fallback = target - math.sin(math.pi - m) * m  # beyond theta = pi - m
        with_margin = torch.where(target > math.cos(math.pi - m), with_margin, fallback)
        return self.scale * cos.scatter(1, labels[:, None], with_margin)

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, margin: float | None = None
    ) -> torch.Tensor:
        return F.cross_entropy(self.logits(embeddings, labels, margin), labels)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The schedule's factor times cfg.lr: linear warmup, then cosine decay to zero."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def make_optimizer(model: nn.Module, loss_fn: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """One optimizer, two groups (backbone, class centres); each group's "base" scales lr_at."""
    head_lr = cfg.head_lr if cfg.head_lr is not None else cfg.lr
    groups = [
        {"params": list(model.parameters()), "base": 1.0},
        {"params": list(loss_fn.parameters()), "base": head_lr / cfg.lr},
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    raise LorasynthError(f"unknown optimizer {cfg.optimizer!r}; choose adamw or sgd")


def margin_at(step: int, cfg: TrainConfig) -> float:
    ramp = cfg.margin_warmup * cfg.steps
    return cfg.margin if ramp <= 0 else cfg.margin * min(1.0, step / ramp)


class TrainingFaces:
    """Batch t of random (subject, nuisance) renders of a domain, a pure function of (seed, t)."""

    def __init__(
        self, num_identities: int, seed: int, size: int, max_shift: int = 0, domain: str = "faces"
    ) -> None:
        self.domain = get_domain(domain)
        start = self.domain.model_training_start
        self.attrs = [self.domain.identity_attributes(start + i) for i in range(num_identities)]
        self.seed, self.size, self.max_shift = seed, size, max_shift

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) float images in [0, 1] and (B,) int64 identity labels."""
        rng = np.random.default_rng([self.seed, step])
        labels = rng.integers(len(self.attrs), size=batch_size)
        render, sample = self.domain.render, self.domain.sample_nuisance
        images = np.stack([render(self.attrs[i], sample(rng), self.size) for i in labels])
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        if self.max_shift:
            x = _random_shift(x, rng.integers(-self.max_shift, self.max_shift + 1, (batch_size, 2)))
        return x, torch.from_numpy(labels)


def _random_shift(x: torch.Tensor, shifts: np.ndarray) -> torch.Tensor:
    """Translate each image by (dy, dx) pixels, repeating the border (the background)."""
    p = int(np.abs(shifts).max()) if len(shifts) else 0
    if p == 0:
        return x
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    s = x.shape[-1]
    return torch.stack(
        [
            padded[i, :, p + dy : p + dy + s, p + dx : p + dx + s]
            for i, (dy, dx) in enumerate(shifts)
        ]
    )


def train_embedder(
    model_config: EmbedderConfig,
    cfg: TrainConfig,
    state_path: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    checkpoint_seconds: float = 180.0,
    until: int | None = None,
    log_every: int = 100,
    domain: str = "faces",
) -> tuple[MiniEmbedder, dict[str, Any]]:
    """Train (or resume) one embedder on renders of `domain`; returns it in eval mode and a log
    (losses, seconds).

    `until` stops after that many steps (checkpointed) so a run can be continued later.
    """
    torch.manual_seed(cfg.seed)
    model = MiniEmbedder(model_config).to(memory_format=torch.channels_last)
    loss_fn = ArcFaceLoss(model_config.embed_dim, cfg.num_identities, cfg.scale, cfg.margin)
    opt = make_optimizer(model, loss_fn, cfg)
    domain = get_domain(domain).name
    run_config = {"model": model_config.to_dict(), "train": asdict(cfg), DOMAIN_KEY: domain}
    step, seconds, losses = 0, 0.0, []
    if state_path is not None and resume and Path(state_path).is_file():
        stored = load_training_state(state_path)["config"]
        if {DOMAIN_KEY: "faces", **stored} != run_config:  # states from before domains: faces
            raise LorasynthError(
                f"{state_path}: was written by a different configuration; delete it or run "
                "without --resume to start over"
            )
        state = load_training_state(
            state_path, modules={"model": model, "arcface": loss_fn}, optimizers={"opt": opt}
        )
        step, seconds = state["step"], float(state["extra"]["seconds"])
        losses = list(state["extra"]["losses"])

    def checkpoint() -> None:
        if state_path is not None:
            save_training_state(
                state_path,
                step=step,
                modules={"model": model, "arcface": loss_fn},
                optimizers={"opt": opt},
                config=run_config,
                extra={"seconds": seconds, "losses": losses},
            )

    faces = TrainingFaces(
        cfg.num_identities, cfg.seed, model_config.image_size, cfg.max_shift, domain
    )
    stop = cfg.steps if until is None else min(until, cfg.steps)
    model.train()
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        desc=model_config.name,
        unit="step",
        disable=not progress,
        mininterval=5.0,
    )
    started, last_save, running, interval = time.monotonic(), time.monotonic(), None, []
    while step < stop:
        x, labels = faces.batch(step, cfg.batch_size)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg) * group["base"]
        loss = loss_fn(
            model(x.contiguous(memory_format=torch.channels_last)), labels, margin_at(step, cfg)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        value = loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        interval.append(value)
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}", lr=f"{lr_at(step - 1, cfg):.2e}", refresh=False)
        if step % log_every == 0 or step == stop:
            losses.append([step, round(sum(interval) / len(interval), 4)])  # interval mean
            interval = []
        now = time.monotonic()
        if now - last_save >= checkpoint_seconds or step == stop:
            seconds += now - started
            started = last_save = now
            checkpoint()
    bar.close()
    seconds += time.monotonic() - started
    model = model.to(memory_format=torch.contiguous_format).eval()
    return model, {"steps": step, "seconds": round(seconds, 1), "losses": losses}


# ---------------------------------------------------------------------------- evaluation


def render_eval_set(
    num_identities: int = 1000,
    images_per_identity: int = 4,
    start: int = EVAL_START,
    nuisance_seed: int = 0,
    progress: bool = False,
    domain: str = "faces",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8, labels (N,), attributes (N, A) of held-out identities."""
    dom = get_domain(domain)
    images, labels, attrs = [], [], []
    for j in tqdm(range(num_identities), desc="render", disable=not progress, mininterval=5.0):
        vec = dom.identity_attributes(start + j).as_vector()
        for image, _ in dom.render_identity(start + j, images_per_identity, nuisance_seed):
            images.append(image)
            labels.append(j)
            attrs.append(vec)
    return np.stack(images), np.array(labels), np.stack(attrs).astype(np.float32)


def verification_metrics(
    embeddings: torch.Tensor, labels: torch.Tensor | np.ndarray, far: float = 1e-3
) -> dict[str, float]:
    """All-pairs verification: TAR at the given FAR, EER, and pair counts.

    Genuine pairs share a label, impostor pairs do not; a pair's score is its cosine.
    The threshold is the score that at most `far` of the impostor pairs exceed.
    """
    e = F.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=1)
    y = torch.as_tensor(labels)
    i, j = torch.triu_indices(len(e), len(e), offset=1)
    scores = (e[i] * e[j]).sum(1)
    same = y[i] == y[j]
    genuine, impostor = scores[same].sort().values, scores[~same].sort().values
    if len(genuine) == 0 or len(impostor) == 0:
        raise LorasynthError("verification needs both genuine and impostor pairs")
    k = math.floor(far * len(impostor))  # impostors allowed above the threshold
    threshold = float(impostor[len(impostor) - 1 - k]) if k < len(impostor) else -math.inf
    tar = float((genuine > threshold).float().mean())
    # EER: FRR only changes at genuine scores, so those are the thresholds worth trying.
    frr = torch.arange(len(genuine), dtype=torch.float64) / len(genuine)  # share below genuine[t]
    far_t = 1.0 - torch.searchsorted(impostor, genuine).double() / len(impostor)
    best = int((far_t - frr).abs().argmin())
    return {
        "tar_at_far": tar,
        "far": far,
        "threshold": threshold,
        "eer": float((far_t[best] + frr[best]) / 2),
        "genuine_pairs": len(genuine),
        "impostor_pairs": len(impostor),
    }


def rank1_identification(
    embeddings: torch.Tensor, labels: torch.Tensor | np.ndarray, gallery_size: int = 100
) -> float:
    """Closed-set rank-1 accuracy: identities in groups of `gallery_size`; the first image of
    each is the gallery, the rest are probes matched to the most similar gallery image."""
    e = F.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=1)
    y = torch.as_tensor(labels)
    ids = torch.unique(y, sorted=True)
    correct = total = 0
    for start in range(0, len(ids) - gallery_size + 1, gallery_size):
        group = ids[start : start + gallery_size]
        gallery = torch.tensor([int(torch.nonzero(y == g)[0]) for g in group])
        member = torch.isin(y, group)
        member[gallery] = False
        probes = torch.nonzero(member).squeeze(1)
        if len(probes) == 0:
            continue
        best = (e[probes] @ e[gallery].T).argmax(1)
        correct += int((group[best] == y[probes]).sum())
        total += len(probes)
    if total == 0:
        raise LorasynthError(
            f"rank-1 needs at least {gallery_size} identities with two or more images each"
        )
    return correct / total


def evaluate_embedder(
    embedder: MiniEmbedder,
    eval_set: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    far: float = 1e-3,
    gallery_size: int = 100,
) -> dict[str, Any]:
    """Verification (TAR@FAR, EER) and rank-1 identification on held-out identities."""
    images, labels, _ = eval_set if eval_set is not None else render_eval_set()
    emb = embed_images(embedder, images)
    metrics = verification_metrics(emb, labels, far)
    metrics["rank1"] = rank1_identification(emb, labels, gallery_size)
    metrics["gallery_size"] = gallery_size
    metrics["identities"] = len(np.unique(labels))
    metrics["images"] = len(labels)
    return metrics


def fit_attribute_regressor(
    embedder: MiniEmbedder,
    num_identities: int = REGRESSOR_IDENTITIES,
    images_per_identity: int = 2,
    hidden: int = 256,
    epochs: int = 60,
    seed: int = 0,
    progress: bool = False,
    domain: str = "faces",
) -> tuple[AttributeRegressor, np.ndarray]:
    """An MLP from frozen embeddings to attributes, fitted on identities REGRESSOR_START + j.

    Returns it and the training attributes' mean (the "predict the mean" baseline).
    """
    images, _, attrs = render_eval_set(
        num_identities, images_per_identity, REGRESSOR_START, seed, progress, domain
    )
    emb = embed_images(embedder, images)
    target = torch.from_numpy(attrs)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    config = RegressorConfig(
        input_dim=emb.shape[1],
        hidden=hidden,
        attribute_names=get_domain(domain).attribute_names,
        embedder_id=embedder.embedder_id or "",
    )
    regressor = AttributeRegressor(config)
    steps = max(100, epochs * len(emb) // 256)
    opt = torch.optim.AdamW(regressor.parameters(), lr=2e-3, weight_decay=1e-4)
    for step in tqdm(range(steps), desc="attribute regressor", disable=not progress, mininterval=5):
        idx = torch.randint(len(emb), (256,), generator=gen)
        for group in opt.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = F.smooth_l1_loss(regressor(emb[idx]), target[idx], beta=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return regressor.eval(), attrs.mean(0)


@torch.no_grad()
def attribute_metrics(
    regressor: AttributeRegressor,
    embedder: MiniEmbedder,
    images: np.ndarray,
    attrs: np.ndarray,
    baseline: np.ndarray,
) -> dict[str, Any]:
    """Mean absolute error per attribute and overall, against predicting `baseline` (the mean).

    "informative" lists the attributes the regressor predicts clearly better than the mean
    (error below 0.8 x baseline): only those can show an attribute error in generated images.
    """
    names = regressor.config.attribute_names
    pred = regressor(embed_images(embedder, images)).numpy()
    mae = np.abs(pred - attrs).mean(0)
    base = np.abs(baseline[None, :] - attrs).mean(0)
    informative = mae < 0.8 * base
    some = bool(informative.any())
    return {
        "mae": float(mae.mean()),
        "baseline_mae": float(base.mean()),
        "informative": [n for n, ok in zip(names, informative, strict=True) if ok],
        "informative_mae": float(mae[informative].mean()) if some else None,
        "informative_baseline_mae": float(base[informative].mean()) if some else None,
        "per_attribute": {
            name: {"mae": round(float(m), 4), "baseline_mae": round(float(b), 4)}
            for name, m, b in zip(names, mae, base, strict=True)
        },
    }


# ---------------------------------------------------------------------------- entry points


def build_embedder(
    name: str,
    out_dir: str | os.PathLike[str],
    steps: int | None = None,
    resume: bool = True,
    progress: bool = True,
    state_dir: str | os.PathLike[str] | None = None,
    eval_identities: int = 1000,
    regressor_identities: int = REGRESSOR_IDENTITIES,
) -> dict[str, Any]:
    """Train, evaluate and write `<name>.safetensors` and `<name>.json` into out_dir (and, for
    a domain's judge, `attribute-regressor.safetensors`); returns the measured metrics.

    The embedder's domain (its renders, its metadata) follows from its name."""
    model_config, cfg = embedder_config(name), TRAINING[name]
    domain = get_domain(embedder_domain(name))
    if steps is not None:
        cfg = TrainConfig(**{**asdict(cfg), "steps": int(steps)})
    out_dir = Path(out_dir)
    state_dir = Path(state_dir) if state_dir else build_dir() / "mini-world" / "embedders" / name
    state_path = state_dir / "state.safetensors"
    if not resume:
        state_path.unlink(missing_ok=True)
    model, log = train_embedder(model_config, cfg, state_path, resume, progress, domain=domain.name)

    eval_set = render_eval_set(eval_identities, progress=progress, domain=domain.name)
    metrics = evaluate_embedder(model, eval_set)
    extra = {"metrics": metrics, DOMAIN_KEY: domain.name}
    embedder_id = save_embedder(model, out_dir / f"{name}.safetensors", extra)
    record: dict[str, Any] = {
        "name": name,
        DOMAIN_KEY: domain.name,
        "embedder_id": embedder_id,
        "parameters": count_parameters(model),
        "config": model_config.to_dict(),
        "train": asdict(cfg),
        "steps": log["steps"],
        "seconds": log["seconds"],
        "losses": log["losses"],
        "metrics": metrics,
        "data": {
            "train_identities": [MODEL_TRAINING_START, MODEL_TRAINING_START + cfg.num_identities],
            "eval_identities": [EVAL_START, EVAL_START + metrics["identities"]],
        },
    }
    if name == domain.judge:
        started = time.monotonic()
        regressor, mean = fit_attribute_regressor(
            model, regressor_identities, progress=progress, domain=domain.name
        )
        attributes = attribute_metrics(regressor, model, eval_set[0], eval_set[2], mean)
        save_regressor(
            regressor, out_dir / f"{REGRESSOR_NAME}.safetensors", {"metrics": attributes}
        )
        record["attribute_regressor"] = {
            **attributes,
            "train_identities": [REGRESSOR_START, REGRESSOR_START + regressor_identities],
            "seconds": round(time.monotonic() - started, 1),
        }
        metrics = {
            **metrics,
            "attribute_mae": attributes["mae"],
            "attribute_baseline_mae": attributes["baseline_mae"],
        }
    write_json_atomic(out_dir / f"{name}.json", record)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, choices=embedder_names())
    parser.add_argument("--steps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue from build/ state")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    metrics = build_embedder(args.name, args.out, args.steps, resume=args.resume)
    print({k: v for k, v in metrics.items() if not isinstance(v, dict)})


if __name__ == "__main__":
    main()
