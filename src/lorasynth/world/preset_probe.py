"""Choose the bank's LoRA preset and rank by measurement: identity gained vs bytes per LoRA.

For a few bank-train identities, trains a LoRA per (preset, rank), generates images with the
subject prompt and scores them with `mini-eval` against reference renders (world.acceptance),
next to the base model. Prints a table and writes JSON; `python -m lorasynth.world.preset_probe --out FILE`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from lorasynth.atomic import write_json_atomic
from lorasynth.lora import LoraLayout
from lorasynth.paths import mini_world_dir
from lorasynth.world.acceptance import IdentityScorer
from lorasynth.world.bank_build import BankBuildConfig, identity_training_data
from lorasynth.world.identities import identity_seeds
from lorasynth.world.lora_trainer import LoraTrainConfig, train_subject_loras

CANDIDATES = (("w2w", 1), ("w2w", 4), ("attn", 1), ("attn", 4))


def probe(
    identities: int = 16,
    steps: int = 200,
    candidates=CANDIDATES,
    images_per_identity: int = 4,
    lr: float = 3e-3,
    split: str = "train",
    prompts: tuple[str, ...] = ("a photo of sks person",),
) -> dict:
    """Image i of an identity uses prompts[i % len(prompts)]; top-1 is among the probe's own
    identities, and prompt fidelity is scored on the images whose prompt names a background
    (so `--split heldout --identities 100 --eval-prompts` measures the bank's acceptance)."""
    from lorasynth.world.pipeline_io import load_pipeline

    torch.set_num_threads(1)
    pipe = load_pipeline(mini_world_dir() / "pipeline")
    seeds = identity_seeds(split, identities)
    scorer = IdentityScorer(pipe, seeds, prompts, images_per_identity)
    base_layout = LoraLayout.from_unet(pipe.unet, "w2w", 1)
    results = {"base": scorer.score([None] * identities, base_layout)}
    for preset, rank in candidates:
        layout = LoraLayout.from_unet(pipe.unet, preset, rank)
        config = BankBuildConfig(
            lora=LoraTrainConfig(
                preset=preset, rank=rank, steps=steps, lr=lr, samples_per_subject=2
            )
        )
        data = [identity_training_data(s, config) for s in seeds]
        start = time.perf_counter()
        loras, log = train_subject_loras(
            pipe,
            layout,
            np.stack([d[0] for d in data]),
            [d[1] for d in data],
            config.lora,
            progress=False,
        )
        seconds = time.perf_counter() - start
        results[f"{preset} r{rank}"] = {
            **scorer.score(loras, layout),
            "values": layout.size,
            "bytes_per_lora_fp32": layout.size * 4,
            "train_seconds_per_lora": seconds / identities,
            "loss_last": float(np.mean(log["loss"][-10:])),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--identities", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--split", choices=["train", "heldout"], default="train")
    parser.add_argument("--images", type=int, default=4, help="images per identity")
    parser.add_argument(
        "--eval-prompts",
        action="store_true",
        help="cycle through evaluate's prompts (with backgrounds) instead of the subject prompt",
    )
    parser.add_argument(
        "--candidates",
        default=",".join(f"{p}:{r}" for p, r in CANDIDATES),
        help="comma-separated PRESET:RANK pairs",
    )
    args = parser.parse_args()
    candidates = [(p, int(r)) for p, _, r in (c.partition(":") for c in args.candidates.split(","))]
    from lorasynth.evaluate.run import domain_prompts

    prompts = domain_prompts("faces") if args.eval_prompts else ("a photo of sks person",)
    results = probe(
        args.identities, args.steps, candidates, args.images, args.lr, args.split, prompts
    )
    write_json_atomic(args.out, results)
    for name, row in results.items():
        extra = (
            f"  {row['values']:>7,} values  {row['train_seconds_per_lora']:.2f} s/LoRA"
            if "values" in row
            else ""
        )
        print(
            f"{name:16} ID sim {row['id_sim']:.3f} ± {row['ci95']:.3f}  top-1 {row['top1']:.2f}"
            f"  prompt fidelity {row.get('prompt_fidelity', float('nan')):.2f}{extra}"
        )


if __name__ == "__main__":
    main()
