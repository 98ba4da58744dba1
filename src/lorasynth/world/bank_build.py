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

from lorasynth.atomic import write_json_atomic
from lorasynth.lora import LoraLayout, write_lora
from lorasynth.world.attributes import caption
from lorasynth.world.identities import LORA_TRAINING_PHOTOS, bank_id, identity_seeds
from lorasynth.world.lora_trainer import LoraTrainConfig, train_subject_loras
from lorasynth.world.render import render_identity


@dataclass(frozen=True)
class BankBuildConfig:
    images_per_identity: int = 8
    chunk: int = 32
    nuisance_seed: int = LORA_TRAINING_PHOTOS
    image_size: int = 32
    lora: LoraTrainConfig = field(default_factory=LoraTrainConfig)

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
    shots = render_identity(
        seed, config.images_per_identity, config.nuisance_seed, config.image_size
    )
    images = np.stack([image for image, _ in shots])
    prompts = [caption(nuisance, subject=config.lora.subject_prompt) for _, nuisance in shots]
    return images, prompts


def train_chunk(
    pipe,
    layout: LoraLayout,
    seeds: Sequence[int],
    config: BankBuildConfig,
    chunk_index: int,
    out_dir: Path,
    progress: bool = True,
) -> dict:
    """Train and write the LoRAs of one chunk of identities; returns its log."""
    data = [identity_training_data(s, config) for s in seeds]
    images = np.stack([d[0] for d in data])
    prompts = [d[1] for d in data]
    # Each chunk has its own seed, so results do not depend on which worker ran it.
    lora_config = replace(config.lora, seed=config.lora.seed * 1_000_003 + chunk_index)
    loras, log = train_subject_loras(pipe, layout, images, prompts, lora_config, progress)
    for seed, lora in zip(seeds, loras, strict=True):
        provenance = {
            "identity": str(seed),
            "method": "trained",
            "train_config": json.dumps(lora_config.to_dict(), sort_keys=True),
            "images": str(config.images_per_identity),
        }
        write_lora(
            lora_path(out_dir, seed),
            lora,
            to="diffusers",
            title=f"mini-world identity {seed}",
            provenance=provenance,
        )
    return {
        "chunk": chunk_index,
        "identities": [int(s) for s in seeds],
        "seconds": log["seconds"],
        "loss_first": float(np.mean(log["loss"][:10])),
        "loss_last": float(np.mean(log["loss"][-10:])),
    }


def build_split(
    pipeline_dir: Path,
    split: str,
    count: int,
    out_dir: Path,
    config: BankBuildConfig,
    worker: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> list[dict]:
    """Train every missing LoRA of `split` that falls to this worker; resumable."""
    from lorasynth.world.pipeline_io import load_pipeline

    torch.set_num_threads(1)
    seeds = identity_seeds(split, count)
    chunks = [seeds[i : i + config.chunk] for i in range(0, len(seeds), config.chunk)]
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [
        (k, chunk)
        for k, chunk in enumerate(chunks)
        if k % workers == worker and not all(lora_path(out_dir, s).exists() for s in chunk)
    ]
    if not todo:
        return []
    pipe = load_pipeline(pipeline_dir)
    layout = LoraLayout.from_unet(pipe.unet, config.lora.preset, config.lora.rank)
    logs = []
    for n, (k, chunk) in enumerate(todo):
        start = time.perf_counter()
        log = train_chunk(pipe, layout, chunk, config, k, out_dir, progress)
        logs.append(log)
        write_json_atomic(out_dir / "logs" / f"chunk-{k:05d}.json", log)
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
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=str, default="{}", help="BankBuildConfig as JSON")
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    config = BankBuildConfig.from_dict(json.loads(args.config))
    build_split(args.pipeline, args.split, args.count, args.out, config, args.worker, args.workers)


if __name__ == "__main__":
    main()
