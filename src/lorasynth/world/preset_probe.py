"""Choose the bank's LoRA preset and rank by measurement: identity gained vs bytes per LoRA.

For a few bank-train identities, trains a LoRA per (preset, rank), generates images with the
subject prompt and scores them with `mini-eval` against reference renders, next to the base
model. Prints a table and writes JSON; `python -m lorasynth.world.preset_probe --out FILE`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from lorasynth.atomic import write_json_atomic
from lorasynth.batch_generate import generate_with_loras
from lorasynth.evaluate.metrics import id_similarity, mean_ci95, reference_embedding
from lorasynth.lora import LoraLayout
from lorasynth.paths import mini_world_dir
from lorasynth.world.bank_build import BankBuildConfig, identity_training_data
from lorasynth.world.identities import EVAL_REFERENCE_PHOTOS, identity_seeds
from lorasynth.world.lora_trainer import LoraTrainConfig, train_subject_loras
from lorasynth.world.render import render_identity

CANDIDATES = (("w2w", 1), ("w2w", 4), ("attn", 1), ("attn", 4))


def probe(
    identities: int = 16, steps: int = 200, candidates=CANDIDATES, images_per_identity: int = 4
) -> dict:
    from lorasynth.faces.mini import embed_images, load_embedder
    from lorasynth.world.pipeline_io import load_pipeline

    torch.set_num_threads(1)
    pipe = load_pipeline(mini_world_dir() / "pipeline")
    judge = load_embedder("mini-eval")
    seeds = identity_seeds("train", identities)
    refs = np.stack(
        [np.stack([im for im, _ in render_identity(s, 8, EVAL_REFERENCE_PHOTOS)]) for s in seeds]
    )
    ref_emb = reference_embedding(
        embed_images(judge, refs.reshape(-1, 32, 32, 3)).reshape(identities, 8, -1)
    )
    prompt = "a photo of sks person"
    gen_seeds = [1000 + i for i in range(identities * images_per_identity)]

    def score(loras, layout) -> tuple[float, float]:
        per_image = [lo for lo in loras for _ in range(images_per_identity)]
        images = generate_with_loras(pipe, layout, per_image, [prompt] * len(per_image), gen_seeds)
        sims = id_similarity(
            embed_images(judge, images), ref_emb.repeat_interleave(images_per_identity, 0)
        )
        return mean_ci95(sims.reshape(identities, -1).mean(1).numpy())

    base_layout = LoraLayout.from_unet(pipe.unet, "w2w", 1)
    results = {
        "base": dict(zip(("id_sim", "ci95"), score([None] * identities, base_layout), strict=True))
    }
    for preset, rank in candidates:
        layout = LoraLayout.from_unet(pipe.unet, preset, rank)
        config = BankBuildConfig(
            lora=LoraTrainConfig(preset=preset, rank=rank, steps=steps, samples_per_subject=2)
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
        sim, ci = score(loras, layout)
        results[f"{preset} r{rank}"] = {
            "id_sim": sim,
            "ci95": ci,
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
    args = parser.parse_args()
    results = probe(args.identities, args.steps)
    write_json_atomic(args.out, results)
    for name, row in results.items():
        extra = (
            f"  {row['values']:>7,} values  {row['train_seconds_per_lora']:.2f} s/LoRA"
            if "values" in row
            else ""
        )
        print(f"{name:10} ID sim {row['id_sim']:.3f} ± {row['ci95']:.3f}{extra}")


if __name__ == "__main__":
    main()
