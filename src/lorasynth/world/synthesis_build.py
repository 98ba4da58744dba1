"""Build stages for synthesis on the mini-world: condition tables, the LoRA VAE, the priors.

- conditions: K photos per bank identity (nuisance stream CONDITION_PHOTOS) embedded with
  mini-arcface, stored beside each bank as conditions.safetensors;
- synthesis: the LoRA VAE and the priors (the default AdaLoRA/v prior plus the ablations the
  evaluation compares), each trained on the bank, written to assets/mini-world/synthesis/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lorasynth.atomic import write_bytes_atomic
from lorasynth.bank import Bank
from lorasynth.bank.conditions import CONDITIONS_FILE, ConditionTable
from lorasynth.domains import check_same_domain, get_domain, load_mini_embedder
from lorasynth.errors import LorasynthError
from lorasynth.lora.safetensors_io import save_half_copy
from lorasynth.models.store import save_half_model_copy
from lorasynth.synthesis import STRENGTH_KEY
from lorasynth.train import PRIOR_FILE, PriorTrainConfig, VAETrainConfig, train_prior, train_vae

DEFAULT_PRIOR = "adalora-v"


@dataclass(frozen=True)
class SynthesisBuildConfig:
    condition_photos: int = 8
    # Ship the VAE and priors with float16 weights (half the bytes; loaders upcast). The
    # priors train against the shipped VAE, so they see exactly the latents users get.
    half_precision: bool = True
    vae: VAETrainConfig = field(
        default_factory=lambda: VAETrainConfig(
            latent_dim=64, hidden=512, depth=2, steps=6000, batch_size=128
        )
    )
    prior: PriorTrainConfig = field(
        default_factory=lambda: PriorTrainConfig(
            width=256, depth=4, adalora_rank=4, cond_embed_dim=128, steps=20000, batch_size=256
        )
    )
    # Choose each prior's strength on this many validation subjects (world.calibrate) and ship
    # it in the prior's metadata; 0: no calibration, LoRAs as sampled.
    calibration_subjects: int = 0
    # name -> overrides of `prior`; the first is the shipped default (synthesis/prior.safetensors).
    priors: dict[str, dict] = field(
        default_factory=lambda: {
            "adalora-v": {},
            "adanorm-v": {"conditioning": "adanorm"},
            "adalora-eps": {"target": "eps"},
            "adalora-x0": {"target": "x0"},
        }
    )


def seed_of(row_id: str) -> int:
    try:
        return int(row_id.removeprefix("id-"))
    except ValueError:
        raise LorasynthError(
            f"bank id {row_id!r} is not a mini-world identity (id-NNNNNNN)"
        ) from None


def build_conditions(
    bank_path: Path,
    photos: int,
    embedder_name: str | None = None,
    progress: bool = True,
    domain: str | None = None,
) -> Path:
    """Embed `photos` condition renders of every bank identity -> BANK/conditions.safetensors.

    The domain is the bank's (an explicit one must agree); the embedder defaults to the
    domain's conditioner (faces: mini-arcface, products: mini-style)."""
    from lorasynth.faces.mini import embed_images

    bank = Bank(bank_path)
    if domain is not None:
        check_same_domain(f"bank {bank.path}", bank.domain, "the requested domain", domain)
    dom = get_domain(bank.domain)
    embedder = load_mini_embedder(dom, embedder_name)
    rows = []
    for row_id in tqdm(bank.ids, desc=f"conditions {bank.path.name}", disable=not progress):
        shots = dom.render_identity(seed_of(row_id), photos, dom.condition_photos)
        rows.append(embed_images(embedder, np.stack([image for image, _ in shots])))
    table = ConditionTable(list(bank.ids), torch.stack(rows), embedder.embedder_id, dom.name)
    return table.save(bank.path / CONDITIONS_FILE)


def _ship(trained: Path, target: Path, half: bool, metadata: dict[str, str] | None = None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if half:
        save_half_model_copy(trained, target, metadata)
    elif metadata:
        save_half_copy(trained, target, keys=lambda key: False, metadata=metadata)
    else:
        write_bytes_atomic(target, trained.read_bytes())


def strength_metadata(calibration: dict) -> dict[str, str] | None:
    """The shipped prior's metadata for a calibration's chosen strength (None: as sampled)."""
    chosen = calibration["chosen"]
    return {STRENGTH_KEY: str(chosen)} if chosen is not None else None


def calibrate_prior(
    trained: Path, vae: Path, run: Path, domain: str, subjects: int, progress: bool
) -> dict:
    """The prior's strength calibration (world.calibrate), cached in its run folder per
    weights hash, so a resumed build does not score again."""
    from lorasynth.atomic import write_json_atomic
    from lorasynth.synthesis import Prior, Synthesizer
    from lorasynth.world.calibrate import prior_sampler, strength_scores
    from lorasynth.world.identities import validation_seeds
    from lorasynth.world.pipeline_io import load_pipeline

    dom = get_domain(domain)
    # The bank the prior was trained on, without the shipped prior (which may be stale).
    synth = Synthesizer.load(bank=dom.fullest_bank("bank"))
    prior = Prior.load(trained, synth.bank, synth.normaliser, synth.embedder.embedder_id, vae)
    cache = run / "calibration.json"
    if cache.is_file():
        record = json.loads(cache.read_text())
        if record.get("prior") == prior.name and record.get("subjects") == subjects:
            return record
    if progress:
        print(f"calibrating the strength of {prior.name}", flush=True)
    pipe = load_pipeline(dom.root() / "pipeline")
    seeds = validation_seeds(subjects)
    scores = strength_scores(synth, prior_sampler(synth, prior), pipe, seeds, domain=domain)
    record = {"prior": prior.name, **scores}
    write_json_atomic(cache, record)
    return record


def build_synthesis_models(
    config: SynthesisBuildConfig, resume: bool = True, progress: bool = True, domain: str = "faces"
) -> dict:
    """Train every prior variant (and the LoRA VAE if one of them decodes through it) on the
    domain's full bank (Domain.fullest_bank: build/ when more was trained than ships); returns
    where each landed (assets/mini-world[/<domain>]/synthesis/)."""
    dom = get_domain(domain)
    bank = dom.fullest_bank("bank")
    out = dom.root() / "synthesis"
    runs = dom.build_root() / "synthesis"
    out.mkdir(parents=True, exist_ok=True)
    shipped_vae = out / "lora-vae.safetensors"
    configs = {name: replace(config.prior, **o) for name, o in config.priors.items()}
    made: dict = {}
    calibrations = {}
    if any(c.representation == "vae" for c in configs.values()):
        vae_path = train_vae(bank, runs / "vae", config.vae, resume=resume, progress=progress)
        _ship(vae_path, shipped_vae, config.half_precision)
        made["vae"] = str(shipped_vae)
    else:
        # No shipped prior decodes through a VAE: a stale one would only cost bytes.
        shipped_vae.unlink(missing_ok=True)
    for k, (name, prior_config) in enumerate(configs.items()):
        trained = train_prior(
            bank,
            bank / CONDITIONS_FILE,
            runs / name,
            prior_config,
            vae_path=shipped_vae,
            resume=resume,
            progress=progress,
        )
        target = out / (PRIOR_FILE if k == 0 else f"priors/prior-{name}.safetensors")
        metadata = None
        if config.calibration_subjects:
            calibrations[name] = calibrate_prior(
                trained, shipped_vae, runs / name, domain, config.calibration_subjects, progress
            )
            metadata = strength_metadata(calibrations[name])
        _ship(trained, target, config.half_precision, metadata)
        made[name] = str(target)
    if calibrations:
        made["calibration"] = calibrations
    return made
