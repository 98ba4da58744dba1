"""Training loops for the LoRA VAE and the diffusion prior: linear, resumable, accelerate-ready.

Both loops read the bank through its memory-mapped shards one batch at a time, so memory does
not grow with bank size. Under `accelerate launch` each process takes its slice of the same
global batch (indices, times and noise are drawn from a per-step seed), and gradients are
averaged, so 2 processes follow the 1-process loss curve up to float rounding.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from lorasynth.atomic import file_lock, write_json_atomic
from lorasynth.bank import NORMALISER_FILE, Bank, Normaliser
from lorasynth.bank.conditions import ConditionTable
from lorasynth.checkpoint import load_training_state, save_training_state, training_state_info
from lorasynth.domains import check_same_domain
from lorasynth.errors import LorasynthError
from lorasynth.lincomb import ANCHOR_KEY, ANCHOR_SCALE_KEY, LincombConfig, lincomb_vectors
from lorasynth.models.denoiser import Denoiser, DenoiserConfig
from lorasynth.models.diffusion import check_target, diffusion_loss, draw_times
from lorasynth.models.representation import (
    LinearSkip,
    PcaRepresentation,
    Representation,
    RidgeRepresentation,
    VaeRepresentation,
    check_representation,
)
from lorasynth.models.store import Provenance, load_vae, save_model
from lorasynth.models.vae import LoraVAE, LoraVAEConfig, vae_loss

VAE_FILE = "lora-vae.safetensors"
PRIOR_FILE = "prior.safetensors"
STATE_FILE = "state.safetensors"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class VAETrainConfig:
    latent_dim: int = 64
    hidden: int = 512
    depth: int = 2
    kl_weight: float = 1e-4
    dropout: float = 0.0
    steps: int = 4000
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 500


@dataclass(frozen=True)
class PriorTrainConfig:
    representation: str = "vae"  # vae | pca | ridge | raw
    pca_dim: int = 64  # dimensions of a pca or ridge representation
    width: int = 512
    depth: int = 6
    conditioning: str = "adalora"
    adalora_rank: int = 8
    cond_embed_dim: int = 256
    cond_dropout: float = 0.1
    target: str = "v"
    steps: int = 20000
    batch_size: int = 256
    lr: float = 3e-4
    ema: float = 0.999
    latent_noise: float = 0.0  # sample VAE posteriors instead of means (augmentation)
    seed: int = 0
    checkpoint_every: int = 1000
    # Train on the bank's first N subjects only (0: all): the bank-size scaling ablation. The
    # normaliser and VAE stay those of the whole bank, so only the prior's data shrinks.
    subjects: int = 0
    # Diffuse over the residual of a linear map from condition to latent (fitted on the bank
    # by ridge regression, stored with the prior and added back when sampling), so what
    # generalises linearly is given and the network models the rest.
    linear_skip: bool = False
    # Fraction of each batch made of two subjects mixed (mixup): LoRA vectors and condition
    # embeddings interpolated with one weight. With few subjects a prior memorises them; the
    # mixes teach it what lies between (on the faces bank the embedding-to-LoRA map is close
    # to linear: README, "v2").
    mixup: float = 0.0
    # "lincomb": diffuse over the residual around lincomb's LoRA for the condition (made, for
    # each bank subject, from the other subjects; in the latent, scaled per coordinate by
    # least squares), so what the nearest subjects already give is given and the network
    # models what they miss. Needs a linear representation (not vae);
    # sampling then needs the bank (Synthesizer.sample_prior). "": none.
    anchor: str = ""


class _Run:
    """The bookkeeping shared by both loops: accelerate, run folder, log, checkpoint cadence."""

    def __init__(self, out_dir: Path, config, kind: str, data: dict | None = None) -> None:
        from accelerate import Accelerator

        # The GPU when there is one (`accelerate launch --cpu` or no GPU: the CPU). Random draws
        # stay on the CPU generator and are moved, so runs are equal on any device count.
        self.accelerator = Accelerator()
        self.device = self.accelerator.device
        self.out = Path(out_dir)
        self.config = config
        self.kind = kind
        # What the run trains on (bank rows, normaliser): a resume on other data is refused.
        self.data = data or {}
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(
                self.out / "config.json",
                {
                    "kind": kind,
                    "config": asdict(config),
                    "data": self.data,
                    "processes": self.world,
                },
            )

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This process's share of a global batch."""
        return x[self.rank :: self.world]

    def step_generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)

    def log(self, step: int, values: dict) -> None:
        if self.is_main:
            with open(self.out / "log.jsonl", "a") as fh:
                fh.write(json.dumps({"step": step, **values}) + "\n")

    def mean_across(self, value: torch.Tensor) -> float:
        return self.accelerator.gather(value.detach().reshape(1)).mean().item()


@contextlib.contextmanager
def _run_lock(out_dir: Path) -> Iterator[None]:
    """Hold OUT/.lock while training into OUT: a second training into the same run folder
    (which would interleave its log and overwrite its checkpoints) is refused, not raced.
    Only the main process takes it; `accelerate launch` workers share their run."""
    from accelerate import PartialState

    if not PartialState().is_main_process:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    busy = (
        f"{out_dir}: another process is training into this run folder; wait for it or use "
        "another --out"
    )
    with file_lock(out_dir / LOCK_FILE, busy):
        yield


def _bank_and_normaliser(bank_path: Path) -> tuple[Bank, Normaliser]:
    bank = Bank(bank_path)
    norm_path = bank.path / NORMALISER_FILE
    if not norm_path.is_file():
        raise LorasynthError(
            f"{bank.path}: no {NORMALISER_FILE}; run `lorasynth bank ingest` again to fit it"
        )
    return bank, Normaliser.load(norm_path, bank.layout_hash)


def _resume(run: _Run, resume: bool, modules: dict, optimizers: dict) -> int:
    state_path = run.out / STATE_FILE
    if resume and state_path.is_file():
        # Compare configs and data before restoring weights, whose shapes may differ; the
        # header holds both, so the tensors are read once, by the restore.
        info = training_state_info(state_path)
        # A field added since the checkpoint was written reads as its default.
        saved = {**asdict(type(run.config)()), **info["config"]}
        if saved != asdict(run.config):
            raise LorasynthError(
                f"{state_path}: was trained with another config; use a new --out or --no-resume"
            )
        # Runs from before data was recorded carry none: they resume as they did.
        saved_data = info["extra"].get("data")
        if saved_data and run.data and saved_data != run.data:
            raise LorasynthError(
                f"{state_path}: was trained on other data ({_describe(saved_data)}; now "
                f"{_describe(run.data)}); use a new --out or --no-resume"
            )
        return load_training_state(state_path, modules=modules, optimizers=optimizers)["step"]
    if run.is_main:
        (run.out / "log.jsonl").unlink(missing_ok=True)
    return 0


def _save_state(run: _Run, step: int, modules: dict, optimizers: dict) -> None:
    run.accelerator.wait_for_everyone()
    if run.is_main:
        save_training_state(
            run.out / STATE_FILE,
            step=step,
            modules=modules,
            optimizers=optimizers,
            config=asdict(run.config),
            extra={"data": run.data},
        )


def _describe(data: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(data.items()))


def _data_of(bank: Bank, norm: Normaliser) -> dict:
    """What a run trains on, as _Run records it."""
    return {"bank_rows": len(bank), "layout_hash": bank.layout_hash, "normaliser": norm.hash}


def train_vae(
    bank_path: str | Path,
    out_dir: str | Path,
    config: VAETrainConfig,
    resume: bool = True,
    progress: bool = True,
    stop_at: int | None = None,
) -> Path | None:
    """Fit the LoRA VAE on the bank's normalised vectors; writes OUT/lora-vae.safetensors.

    `stop_at` ends this run early at that step with a checkpoint (returns None): long trainings
    then proceed in time-boxed pieces.
    """
    with _run_lock(Path(out_dir)):
        return _train_vae(Path(bank_path), Path(out_dir), config, resume, progress, stop_at)


def _train_vae(
    bank_path: Path,
    out_dir: Path,
    config: VAETrainConfig,
    resume: bool,
    progress: bool,
    stop_at: int | None,
) -> Path | None:
    bank, norm = _bank_and_normaliser(bank_path)
    run = _Run(out_dir, config, "vae", _data_of(bank, norm))
    torch.manual_seed(config.seed)
    model = LoraVAE(
        LoraVAEConfig(
            bank.dim,
            config.latent_dim,
            config.hidden,
            config.depth,
            config.kl_weight,
            config.dropout,
        )
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    start = _resume(run, resume, {"model": model}, {"opt": optimizer})
    ddp_model, optimizer = run.accelerator.prepare(model, optimizer)
    began = time.perf_counter()
    end = min(config.steps, stop_at or config.steps)
    bar = tqdm(
        range(start, end),
        desc="train vae",
        disable=not (progress and run.is_main),
        initial=start,
        total=config.steps,
    )
    for step in bar:
        gen = run.step_generator(step)
        rows = torch.randint(len(bank), (config.batch_size,), generator=gen)
        eps = torch.randn(config.batch_size, config.latent_dim, generator=gen)
        z = norm.encode(bank.gather(run.local(rows).tolist())).to(run.device)
        loss, parts = vae_loss(ddp_model(z, run.local(eps).to(run.device)), z, config.kl_weight)
        optimizer.zero_grad(set_to_none=True)
        run.accelerator.backward(loss)
        optimizer.step()
        logged = {
            "loss": run.mean_across(loss),
            **{k: run.mean_across(v) for k, v in parts.items()},
        }
        run.log(step, logged)
        bar.set_postfix(recon=f"{logged['recon']:.4f}")
        if (step + 1) % config.checkpoint_every == 0:
            _save_state(run, step + 1, {"model": model}, {"opt": optimizer})
    _save_state(run, end, {"model": model}, {"opt": optimizer})
    if end < config.steps:
        return None
    out = run.out / VAE_FILE
    if run.is_main:
        provenance = Provenance(bank.layout_hash, norm.hash, domain=bank.domain)
        save_model(out, "lorasynth-lora-vae", model, asdict(model.config), provenance)
        _write_summary(run, began, {"recon_last": _tail_mean(run.out / "log.jsonl", "recon")})
    run.accelerator.wait_for_everyone()
    return out


def _representation(
    config: PriorTrainConfig,
    bank: Bank,
    norm: Normaliser,
    vae_path: Path | None,
    table: ConditionTable,
) -> Representation:
    check_representation(config.representation)
    if config.representation == "raw":
        return Representation(bank.dim)
    if config.representation in ("pca", "ridge"):
        rows = min(len(bank), 20_000)
        sample = norm.encode(bank.vectors(0, rows))
        if config.representation == "ridge":
            cond = table.mean_embeddings_for(bank.ids[:rows])
            rep = RidgeRepresentation.fit_predictable(sample, cond, config.pca_dim)
        else:
            rep = PcaRepresentation.fit(sample, config.pca_dim, config.seed)
        # A float16-exact basis ships at half the bytes without changing the model's identity
        # (its id hashes the basis); it is ~D x k values, the largest part of such a prior.
        return type(rep)(rep.mean, rep.components.half().float())
    if vae_path is None:
        raise LorasynthError("representation 'vae' needs --vae (a lora-vae.safetensors)")
    vae, provenance, digest = load_vae(vae_path)
    provenance.check(
        vae_path, layout_hash=bank.layout_hash, normaliser_hash=norm.hash, domain=bank.domain
    )
    return VaeRepresentation(vae, digest)


def _fit_linear_skip(
    rep: Representation, bank: Bank, norm: Normaliser, table: ConditionTable
) -> LinearSkip:
    """Ridge regression of the bank's latents on its subjects' mean embeddings."""
    return LinearSkip.fit(table.mean_embeddings_for(bank.ids), _bank_latents(rep, bank, norm))


def _bank_latents(rep: Representation, bank: Bank, norm: Normaliser) -> torch.Tensor:
    """Every bank row in prior space (N, latent), encoded a batch at a time."""
    return torch.cat([rep.encode(norm.encode(b)) for b in bank.iter_batches(1024)])


def _anchor_latents(
    config: PriorTrainConfig,
    lincomb: LincombConfig,
    rep: Representation,
    bank: Bank,
    norm: Normaliser,
    table: ConditionTable,
    n_subjects: int,
    progress: bool,
) -> torch.Tensor | None:
    """(n_subjects, photos, latent) latents of each (subject, photo) condition's lincomb vector
    made from the other subjects among the first n_subjects (None without an anchor)."""
    if not config.anchor:
        return None
    if config.anchor != "lincomb":
        raise LorasynthError(f"unknown anchor {config.anchor!r}; choose lincomb or none")
    if not rep.linear:
        raise LorasynthError(
            f"anchor {config.anchor} needs a linear representation (raw, pca, ridge), not {rep.kind}"
        )
    embeddings = table.mean_embeddings_for(bank.ids)[:n_subjects]
    cond_rows = table.index_for(bank.ids)[:n_subjects]
    n_photos = table.embeddings.shape[1]
    out = torch.empty(n_subjects, n_photos, rep.dim)
    chunk = 64
    for start in tqdm(
        range(0, n_subjects, chunk), desc="lincomb anchors", disable=not progress, leave=False
    ):
        rows = torch.arange(start, min(start + chunk, n_subjects))
        cond = table.embeddings[cond_rows[rows]].reshape(-1, table.embeddings.shape[-1])
        vectors = lincomb_vectors(
            cond.float(),
            embeddings,
            lambda idx: norm.align(bank.gather(idx.tolist())),
            norm.mean,
            lincomb,
            exclude=rows.repeat_interleave(n_photos),
        )
        out[rows] = rep.encode(norm.encode(vectors)).float().view(len(rows), n_photos, -1)
    return out


def _anchor_scale_and_stats(
    rep: Representation, bank: Bank, norm: Normaliser, anchors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale, mean, std) per latent coordinate: the least-squares scale of the anchors' latents
    that best predicts the subjects' (lincomb keeps its neighbours' full norm, so unscaled its
    error would spread as wide as the latents themselves: 68 vs 67 on the faces bank), and the
    mean/std of the residuals latent - scale * anchor over every (subject, photo)."""
    latents = _bank_latents(rep, bank, norm)[: len(anchors)].double()
    a = anchors.double()
    z = latents[:, None, :].expand_as(a)
    a_centred = a - a.mean((0, 1))
    scale = (a_centred * (z - z.mean((0, 1)))).sum((0, 1)) / (a_centred**2).sum((0, 1)).clamp_min(
        1e-12
    )
    residuals = (z - scale * a).reshape(-1, rep.dim)
    return scale.float(), residuals.mean(0).float(), residuals.std(0).clamp_min(1e-6).float()


def _latent_stats(
    rep: Representation,
    bank: Bank,
    norm: Normaliser,
    skip: LinearSkip | None = None,
    table: ConditionTable | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate mean/std of the bank in prior space (less the skip's prediction from each
    subject's mean embedding, if any), streamed (one pass)."""
    total, sums, squares = (
        0,
        torch.zeros(rep.dim, dtype=torch.float64),
        torch.zeros(rep.dim, dtype=torch.float64),
    )
    cond = table.mean_embeddings_for(bank.ids) if skip is not None else None
    for batch in bank.iter_batches(1024):
        x = rep.encode(norm.encode(batch)).double()
        if skip is not None:
            x = x - skip(cond[total : total + len(x)]).double()
        total += len(x)
        sums += x.sum(0)
        squares += (x * x).sum(0)
    mean = sums / total
    std = (squares / total - mean * mean).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


def train_prior(
    bank_path: str | Path,
    conditions_path: str | Path,
    out_dir: str | Path,
    config: PriorTrainConfig,
    vae_path: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    stop_at: int | None = None,
) -> Path | None:
    """Fit the conditional diffusion prior; writes OUT/prior.safetensors (EMA weights).

    `stop_at` ends this run early at that step with a checkpoint (returns None).
    """
    check_target(config.target)
    with _run_lock(Path(out_dir)):
        return _train_prior(
            Path(bank_path),
            conditions_path,
            Path(out_dir),
            config,
            vae_path,
            resume,
            progress,
            stop_at,
        )


def _train_prior(
    bank_path: Path,
    conditions_path: str | Path,
    out_dir: Path,
    config: PriorTrainConfig,
    vae_path: str | Path | None,
    resume: bool,
    progress: bool,
    stop_at: int | None,
) -> Path | None:
    bank, norm = _bank_and_normaliser(bank_path)
    run = _Run(out_dir, config, "prior", _data_of(bank, norm))
    table = ConditionTable.load(conditions_path)
    check_same_domain(
        f"bank {bank.path}",
        bank.domain,
        f"conditions {conditions_path} (embedder {table.embedder_id})",
        table.domain,
    )
    cond_rows = table.index_for(bank.ids)
    rep = _representation(config, bank, norm, Path(vae_path) if vae_path else None, table)
    skip = _fit_linear_skip(rep, bank, norm, table) if config.linear_skip else None
    n_subjects = min(config.subjects, len(bank)) if config.subjects > 0 else len(bank)
    lincomb = LincombConfig()  # the anchors' combination, stored with the prior
    anchors = _anchor_latents(config, lincomb, rep, bank, norm, table, n_subjects, progress)
    anchor_scale = None
    if anchors is not None:
        anchor_scale, mean, std = _anchor_scale_and_stats(rep, bank, norm, anchors)
        anchors *= anchor_scale  # what the residuals are taken from
    else:
        mean, std = _latent_stats(rep, bank, norm, skip, table)
    torch.manual_seed(config.seed)
    model = Denoiser(
        DenoiserConfig(
            rep.dim,
            table.embeddings.shape[-1],
            config.width,
            config.depth,
            config.conditioning,
            config.adalora_rank,
            config.cond_embed_dim,
            config.cond_dropout,
            config.target,
        )
    )
    ema = copy.deepcopy(model).requires_grad_(False).to(run.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    modules = {"model": model, "ema": ema}
    start = _resume(run, resume, modules, {"opt": optimizer})
    ddp_model, optimizer = run.accelerator.prepare(model, optimizer)
    began = time.perf_counter()
    end = min(config.steps, stop_at or config.steps)
    bar = tqdm(
        range(start, end),
        desc=f"train prior ({config.conditioning}, {config.target})",
        disable=not (progress and run.is_main),
        initial=start,
        total=config.steps,
    )
    n_photos = table.embeddings.shape[1]
    rep, mean, std = _on_device(rep, run.device), mean.to(run.device), std.to(run.device)
    skip = skip.to(run.device) if skip is not None else None

    def fetch(rows: torch.Tensor, photos: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This process's share of drawn (subject, photo) pairs: normalised vectors,
        conditions (and the anchors' latents, with an anchor)."""
        local_rows, local_photos = run.local(rows), run.local(photos)
        z = norm.encode(bank.gather(local_rows.tolist())).to(run.device)
        cond = table.embeddings[cond_rows[local_rows], local_photos].to(run.device)
        if anchors is None:
            return z, cond
        return z, cond, anchors[local_rows, local_photos].to(run.device)

    for step in bar:
        gen = run.step_generator(step)
        rows = torch.randint(n_subjects, (config.batch_size,), generator=gen)
        photos = torch.randint(n_photos, (config.batch_size,), generator=gen)
        t = draw_times(config.batch_size, gen)
        eps = torch.randn(config.batch_size, rep.dim, generator=gen)
        drop = torch.rand(config.batch_size, generator=gen) < config.cond_dropout
        jitter = torch.randn(config.batch_size, rep.dim, generator=gen) * config.latent_noise
        dev = run.device
        z, cond, *anchor = fetch(rows, photos)
        if config.mixup > 0:
            z, cond, *anchor = _mix(
                (z, cond, *anchor), fetch, gen, n_subjects, n_photos, config, run
            )
        latent = rep.encode(z) + run.local(jitter).to(dev)
        if skip is not None:
            latent = latent - skip(cond)
        if anchor:
            latent = latent - anchor[0]
        x0 = (latent - mean) / std
        local_drop = run.local(drop).to(dev)
        loss = diffusion_loss(
            lambda x, tt, c, drop=local_drop: ddp_model(x, tt, c, drop=drop),
            x0,
            cond,
            config.target,
            t=run.local(t).to(dev),
            eps=run.local(eps).to(dev),
        )
        optimizer.zero_grad(set_to_none=True)
        run.accelerator.backward(loss)
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1 - config.ema)
        logged = {"loss": run.mean_across(loss)}
        run.log(step, logged)
        bar.set_postfix(loss=f"{logged['loss']:.4f}")
        if (step + 1) % config.checkpoint_every == 0:
            _save_state(run, step + 1, modules, {"opt": optimizer})
    _save_state(run, end, modules, {"opt": optimizer})
    if end < config.steps:
        return None
    out = run.out / PRIOR_FILE
    if run.is_main:
        extra = {"latent_mean": mean, "latent_std": std}
        if skip is not None:
            extra.update(skip.tensors())
        if anchors is not None:
            extra[ANCHOR_KEY] = lincomb.tensor()
            extra[ANCHOR_SCALE_KEY] = anchor_scale
        if isinstance(rep, PcaRepresentation):
            extra.update(rep.tensors())
        provenance = Provenance(
            bank.layout_hash,
            norm.hash,
            table.embedder_id,
            rep.id,
            domain=bank.domain,
            subjects=str(n_subjects),
        )
        save_model(out, "lorasynth-prior", ema, asdict(ema.config), provenance, extra)
        _write_summary(run, began, {"loss_last": _tail_mean(run.out / "log.jsonl", "loss")})
    run.accelerator.wait_for_everyone()
    return out


def _mix(batch, fetch, gen, n_subjects: int, n_photos: int, config, run):
    """Mixup: a `config.mixup` fraction of the batch's rows become w * row + (1 - w) * another
    subject's (`fetch`ed like the batch), for vectors, (re-normalised) conditions and anchors
    alike. Drawn after the batch's other draws, so runs without mixup are unchanged."""
    n = config.batch_size
    mixed = torch.rand(n, generator=gen) < config.mixup
    other_rows = torch.randint(n_subjects, (n,), generator=gen)
    other_photos = torch.randint(n_photos, (n,), generator=gen)
    weight = torch.where(mixed, torch.rand(n, generator=gen), torch.ones(n))
    others = fetch(other_rows, other_photos)
    w = run.local(weight).to(batch[0].device).unsqueeze(1)
    out = [w * mine + (1 - w) * other for mine, other in zip(batch, others, strict=True)]
    out[1] = torch.nn.functional.normalize(out[1], dim=-1)  # the condition
    return out


def _on_device(rep: Representation, device: torch.device) -> Representation:
    """The representation with its weights on `device` (a no-op on the CPU)."""
    if isinstance(rep, VaeRepresentation):
        rep.vae.to(device)
    elif isinstance(rep, PcaRepresentation):
        rep = type(rep)(rep.mean.to(device), rep.components.to(device))
    return rep


def _tail_mean(log_path: Path, key: str, n: int = 100) -> float | None:
    if not log_path.is_file():
        return None
    values = [json.loads(line)[key] for line in log_path.read_text().splitlines()[-n:]]
    return sum(values) / len(values) if values else None


def _write_summary(run: _Run, began: float, measured: dict) -> None:
    write_json_atomic(
        run.out / "summary.json",
        {"seconds_this_run": round(time.perf_counter() - began, 1), **measured},
    )
