"""`lorasynth world build`: make the mini-world's shipped models, stage by stage, resumably.

Stages run in order; each writes its artifacts under assets/mini-world/ and records them (sha256,
size, how made, measured numbers) in the manifest. Intermediate checkpoints live in build/
(git-ignored), so an interrupted stage resumes where it stopped when run again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lorasynth.errors import LorasynthError
from lorasynth.paths import build_dir, mini_world_dir
from lorasynth.world.assets import load_manifest, record_stage
from lorasynth.world.bank_build import BankBuildConfig
from lorasynth.world.lora_trainer import LoraTrainConfig
from lorasynth.world.synthesis_build import SynthesisBuildConfig


@dataclass(frozen=True)
class WorldConfig:
    """The sizes of the shipped mini-world (the numbers every report refers to)."""

    train_identities: int = 3000
    heldout_identities: int = 300
    bank: BankBuildConfig = field(
        default_factory=lambda: BankBuildConfig(
            images_per_identity=8,
            chunk=32,
            lora=LoraTrainConfig(preset="w2w", rank=1, steps=200, lr=3e-3, samples_per_subject=2),
        )
    )
    embedder_steps: int | None = None  # None: each embedder's own preset (train_embedders.TRAINING)
    vae_steps: int = 3000
    unet_steps: int = 20000
    workers: int = 2
    synthesis: SynthesisBuildConfig = field(default_factory=SynthesisBuildConfig)


WORLD = WorldConfig()


def _stage_embedders(world: WorldConfig, resume: bool, progress: bool) -> dict:
    from lorasynth.world.train_embedders import build_embedder

    out = mini_world_dir() / "embedders"
    measured = {}
    for name in ("mini-arcface", "mini-eval"):
        measured[name] = build_embedder(
            name, out, world.embedder_steps, resume=resume, progress=progress
        )
    files = sorted(p for p in out.iterdir() if p.is_file())
    record_stage("embedders", files, "python -m lorasynth world build --stage embedders", measured)
    return measured


def _pipeline_run() -> Path:
    """Where the pipeline trains (checkpoints, samples, logs); exported to assets when done."""
    return build_dir() / "mini-world" / "pipeline"


def _stage_vae(world: WorldConfig, resume: bool, progress: bool) -> dict:
    from lorasynth.world.train_pipeline import build_vae

    return build_vae(
        out_dir=_pipeline_run(), steps=world.vae_steps, resume=resume, progress=progress
    )


def _stage_unet(world: WorldConfig, resume: bool, progress: bool) -> dict:
    from lorasynth.world.train_pipeline import build_unet, evaluate_run, export_run

    build_unet(out_dir=_pipeline_run(), steps=world.unet_steps, resume=resume, progress=progress)
    measured = evaluate_run(_pipeline_run())
    export_run(_pipeline_run(), mini_world_dir())
    root = mini_world_dir()
    files = [
        *sorted(p for p in (root / "pipeline").rglob("*") if p.is_file()),
        root / "pipeline-build.json",
    ]
    record_stage(
        "pipeline",
        files,
        "python -m lorasynth world build --stage vae, then --stage unet",
        measured,
    )
    return measured


def _bank_split(
    split: str, count: Callable[[WorldConfig], int], bank_name: str
) -> Callable[[WorldConfig, bool, bool], dict]:
    def run(world: WorldConfig, resume: bool, progress: bool) -> dict:
        from lorasynth.bank import NORMALISER_FILE, Bank, Normaliser
        from lorasynth.world.bank_build import bank_layout

        pipeline = mini_world_dir() / "pipeline"
        bank_path = mini_world_dir() / bank_name
        logs_dir = build_dir() / "mini-world" / "bank-logs" / split
        Bank.open_or_create(bank_path, bank_layout(pipeline, world.bank))  # before workers race
        start = time.perf_counter()
        _run_workers(pipeline, split, count(world), bank_path, logs_dir, world.bank, world.workers)
        trained = time.perf_counter() - start
        bank = Bank(bank_path)
        normaliser = Normaliser.fit(bank.iter_batches(1024), bank.layout_hash)
        normaliser.save(bank.path / NORMALISER_FILE)
        logs = [json.loads(p.read_text()) for p in sorted(logs_dir.glob("chunk-*.json"))]
        n_logged = max(1, sum(len(x["identities"]) for x in logs))
        measured = {
            "identities": len(bank),
            "layout_hash": bank.layout_hash,
            "values_per_lora": bank.dim,
            "normaliser_hash": normaliser.hash,
            "config": world.bank.to_dict(),
            "train_seconds_this_run": round(trained, 1),
            "train_seconds_per_lora": round(sum(x["seconds"] for x in logs) / n_logged, 3)
            if logs
            else None,
            "loss_first_mean": sum(x["loss_first"] for x in logs) / len(logs) if logs else None,
            "loss_last_mean": sum(x["loss_last"] for x in logs) / len(logs) if logs else None,
        }
        files = sorted(p for p in bank.path.iterdir() if p.is_file() and not p.name.startswith("."))
        record_stage(
            bank_name, files, f"python -m lorasynth world build --stage {bank_name}", measured
        )
        return measured

    return run


def _run_workers(
    pipeline: Path,
    split: str,
    count: int,
    bank: Path,
    logs: Path,
    config: BankBuildConfig,
    workers: int,
) -> None:
    """One single-threaded process per worker; each trains every workers-th chunk."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lorasynth.world.bank_build",
                "--pipeline",
                str(pipeline),
                "--split",
                split,
                "--count",
                str(count),
                "--bank",
                str(bank),
                "--logs",
                str(logs),
                "--config",
                json.dumps(config.to_dict()),
                "--worker",
                str(k),
                "--workers",
                str(workers),
            ],
            env=env,
        )
        for k in range(workers)
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise LorasynthError(f"bank workers failed with exit codes {codes}; rerun to resume")


def _stage_conditions(world: WorldConfig, resume: bool, progress: bool) -> dict:
    from lorasynth.world.synthesis_build import build_conditions

    files = [
        build_conditions(
            mini_world_dir() / name, world.synthesis.condition_photos, progress=progress
        )
        for name in ("bank", "bank-heldout")
    ]
    measured = {"photos_per_identity": world.synthesis.condition_photos, "embedder": "mini-arcface"}
    record_stage(
        "conditions", files, "python -m lorasynth world build --stage conditions", measured
    )
    return measured


def _stage_synthesis(world: WorldConfig, resume: bool, progress: bool) -> dict:
    from lorasynth.world.synthesis_build import build_synthesis_models

    made = build_synthesis_models(world.synthesis, resume=resume, progress=progress)
    files = sorted(p for p in (mini_world_dir() / "synthesis").rglob("*.safetensors"))
    record_stage(
        "synthesis", files, "python -m lorasynth world build --stage synthesis", {"files": made}
    )
    return made


STAGES: dict[str, Callable[[WorldConfig, bool, bool], dict]] = {
    "embedders": _stage_embedders,
    "vae": _stage_vae,
    "unet": _stage_unet,
    "bank": _bank_split("train", lambda w: w.train_identities, "bank"),
    "heldout": _bank_split("heldout", lambda w: w.heldout_identities, "bank-heldout"),
    "conditions": _stage_conditions,
    "synthesis": _stage_synthesis,
}


def build(
    stage: str | None = None, resume: bool = True, progress: bool = True, world: WorldConfig = WORLD
) -> dict:
    """Run one stage, or all of them in order."""
    if stage is not None and stage not in STAGES:
        raise LorasynthError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    results = {}
    for name in [stage] if stage else list(STAGES):
        print(f"== world build: stage {name}", file=sys.stderr, flush=True)
        results[name] = STAGES[name](world, resume, progress)
    return results


def world_info() -> dict:
    """The `world info --json` summary, read from the manifest."""
    from lorasynth.bank import Bank

    manifest = load_manifest()
    stages = manifest.get("stages", {})
    info = {
        "identities_train": 0,
        "identities_heldout": 0,
        "layout_hash": None,
        "preset": WORLD.bank.lora.preset,
        "rank": WORLD.bank.lora.rank,
        "embedders": sorted(
            p.stem
            for p in (mini_world_dir() / "embedders").glob("*.safetensors")
            if p.stem.startswith("mini-")
        ),
        "artifact_bytes": manifest.get("total_bytes", 0),
        "measured": {name: entry.get("measured", {}) for name, entry in stages.items()},
    }
    for split, key in (("bank", "identities_train"), ("bank-heldout", "identities_heldout")):
        if (mini_world_dir() / split / "manifest.json").is_file():
            bank = Bank(mini_world_dir() / split)
            info[key] = len(bank)
            info["layout_hash"] = bank.layout_hash
    return info
