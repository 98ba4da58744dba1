"""Build the mini-world's LoRA bank: one DreamBooth-style LoRA per identity, many per batch.

Identities are seed ranges fixed for the whole project (see `identities.py`). Work is cut into
chunks of identities; a chunk is one batched training run whose LoRA files are written at the
end, so a killed build resumes at the first chunk with missing files. Workers take every n-th
chunk, one torch thread each (two single-threaded processes beat one two-threaded one here).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from lorasynth.atomic import sha256_file, write_json_atomic
from lorasynth.bank import Bank
from lorasynth.domains import DOMAIN_KEY, get_domain
from lorasynth.errors import LorasynthError
from lorasynth.lora import LoraFile, LoraLayout, flatten_batch, write_lora
from lorasynth.world.identities import LORA_TRAINING_PHOTOS, bank_id, identity_seeds
from lorasynth.world.lora_trainer import LoraTrainConfig, train_subject_loras


@dataclass(frozen=True)
class BankBuildConfig:
    images_per_identity: int = 8
    chunk: int = 32
    nuisance_seed: int = LORA_TRAINING_PHOTOS
    image_size: int = 32
    lora: LoraTrainConfig = field(default_factory=LoraTrainConfig)
    domain: str = "faces"  # whose subjects (lorasynth.domains); configs without it: faces
    # How a new bank stores its rows: float16 halves a shipped bank (rows read as float32).
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> BankBuildConfig:
        values = dict(values)
        values["lora"] = LoraTrainConfig(**values.get("lora", {}))
        return cls(**values)


def lora_path(out_dir: Path, seed: int) -> Path:
    return out_dir / f"{bank_id(seed)}.safetensors"


def identity_training_data(seed: int, config: BankBuildConfig) -> tuple[np.ndarray, list[str]]:
    """The renders a subject's LoRA is trained on, with captions naming their nuisances."""
    domain = get_domain(config.domain)
    shots = domain.render_identity(
        seed, config.images_per_identity, config.nuisance_seed, config.image_size
    )
    images = np.stack([image for image, _ in shots])
    subject = config.lora.subject_prompt
    prompts = [domain.caption(nuisance, subject=subject) for _, nuisance in shots]
    return images, prompts


def train_chunk(
    pipe,
    layout: LoraLayout,
    seeds: Sequence[int],
    config: BankBuildConfig,
    chunk_index: int,
    progress: bool = True,
) -> tuple[list[LoraFile], dict]:
    """Train the LoRAs of one chunk of identities; returns them and the chunk's log."""
    data = [identity_training_data(s, config) for s in seeds]
    images = np.stack([d[0] for d in data])
    prompts = [d[1] for d in data]
    # Each chunk has its own seed, so results do not depend on which worker ran it.
    lora_config = replace(config.lora, seed=config.lora.seed * 1_000_003 + chunk_index)
    loras, log = train_subject_loras(pipe, layout, images, prompts, lora_config, progress)
    summary = {
        "chunk": chunk_index,
        "identities": [int(s) for s in seeds],
        "seconds": log["seconds"],
        "loss_first": float(np.mean(log["loss"][:10])),
        "loss_last": float(np.mean(log["loss"][-10:])),
    }
    return loras, summary


def write_lora_files(
    out_dir: Path, seeds: Sequence[int], loras: Sequence[LoraFile], config: BankBuildConfig
) -> None:
    for seed, lora in zip(seeds, loras, strict=True):
        provenance = {
            "identity": str(seed),
            "method": "trained",
            "train_config": json.dumps(config.lora.to_dict(), sort_keys=True),
            "images": str(config.images_per_identity),
            DOMAIN_KEY: config.domain,
        }
        write_lora(
            lora_path(out_dir, seed),
            lora,
            to="diffusers",
            title=f"mini-world identity {seed}",
            provenance=provenance,
        )


def bank_layout(pipeline_dir: Path, config: BankBuildConfig) -> LoraLayout:
    """The bank's layout: the pipeline UNet's modules of the configured preset and rank."""
    from diffusers import UNet2DConditionModel

    unet_config = UNet2DConditionModel.load_config(str(pipeline_dir / "unet"))
    return LoraLayout.from_unet_config(unet_config, config.lora.preset, config.lora.rank)


def base_unet_id(pipeline_dir: Path) -> str:
    """Which UNet weights a bank's LoRAs were trained on (sha256 prefix of the weights file)."""
    return sha256_file(pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors")[:16]


def open_bank(
    bank_path: Path, pipeline_dir: Path, layout: LoraLayout, config: BankBuildConfig
) -> Bank:
    """The bank that LoRAs trained on `pipeline_dir` go into (created if absent); refuses a
    bank trained on another base UNet, since LoRAs only mean something on their own UNet."""
    base = base_unet_id(pipeline_dir)
    extra = {DOMAIN_KEY: config.domain, "base_unet": base}
    bank = Bank.open_or_create(bank_path, layout, extra=extra, dtype=config.dtype)
    if bank.extra.get("base_unet", base) != base:
        raise LorasynthError(
            f"{bank_path} was trained on base UNet {bank.extra['base_unet']}, the UNet of "
            f"{pipeline_dir} is {base}; delete the bank to rebuild it on this pipeline"
        )
    return bank


def build_split(
    pipeline_dir: Path,
    split: str,
    count: int,
    bank_path: Path,
    config: BankBuildConfig,
    worker: int = 0,
    workers: int = 1,
    progress: bool = True,
    log_dir: Path | None = None,
    files_dir: Path | None = None,
    device: str = "cpu",
) -> list[dict]:
    """Train every identity of `split` missing from the bank that falls to this worker.

    Each chunk is appended to the bank atomically as soon as it is trained, so the bank itself
    is the checkpoint: a rerun (this session or a later one) skips what it already holds.
    """
    from lorasynth.world.pipeline_io import load_pipeline

    torch.set_num_threads(1)
    seeds = identity_seeds(split, count)
    chunks = [seeds[i : i + config.chunk] for i in range(0, len(seeds), config.chunk)]
    layout = bank_layout(pipeline_dir, config)
    bank = open_bank(bank_path, pipeline_dir, layout, config)
    todo = [
        (k, chunk)
        for k, chunk in enumerate(chunks)
        if k % workers == worker and not all(bank_id(s) in bank for s in chunk)
    ]
    if not todo:
        return []
    pipe = load_pipeline(pipeline_dir).to(device)
    logs = []
    for n, (k, chunk) in enumerate(todo):
        start = time.perf_counter()
        loras, log = train_chunk(pipe, layout, chunk, config, k, progress)
        bank = Bank(bank_path)  # other workers may have appended meanwhile
        fresh = [i for i, s in enumerate(chunk) if bank_id(s) not in bank]
        bank.append(
            [bank_id(chunk[i]) for i in fresh], flatten_batch([loras[i] for i in fresh], layout)
        )
        if files_dir is not None:
            write_lora_files(files_dir, chunk, loras, config)
        logs.append(log)
        if log_dir is not None:
            write_json_atomic(log_dir / f"chunk-{k:05d}.json", log)
        if progress:
            print(
                f"[worker {worker}] chunk {k} ({n + 1}/{len(todo)}): {len(chunk)} LoRAs in "
                f"{time.perf_counter() - start:.0f} s, loss {log['loss_first']:.4f} -> {log['loss_last']:.4f}",
                flush=True,
            )
    return logs


def main() -> None:
    parser = argparse.ArgumentParser(description="Train mini-world bank LoRAs (one worker).")
    parser.add_argument("--pipeline", type=Path, required=True)
    parser.add_argument("--split", choices=["train", "heldout"], required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--bank", type=Path, required=True)
    parser.add_argument("--logs", type=Path, default=None)
    parser.add_argument("--config", type=str, default="{}", help="BankBuildConfig as JSON")
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="torch device to train on (e.g. cuda)")
    args = parser.parse_args()
    config = BankBuildConfig.from_dict(json.loads(args.config))
    build_split(
        args.pipeline,
        args.split,
        args.count,
        args.bank,
        config,
        args.worker,
        args.workers,
        log_dir=args.logs,
        device=args.device,
    )


if __name__ == "__main__":
    main()
