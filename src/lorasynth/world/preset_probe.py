"""Choose the bank's LoRA preset, rank and training recipe by measurement: identity vs cost.

For some identities (bank-train or validation ones, never the evaluated held-out ones), trains a
LoRA per recipe (preset, rank, learning rate, samples a step, renders per identity; several step
counts from one run), generates images and scores them with `mini-eval` against reference
renders (world.acceptance), next to the base model. Prints a table and writes JSON;
`python -m lorasynth.world.preset_probe --out FILE` (`--device cuda` runs on a GPU).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lorasynth.atomic import write_json_atomic
from lorasynth.errors import LorasynthError
from lorasynth.lora import LoraLayout
from lorasynth.paths import mini_world_dir
from lorasynth.world.acceptance import IdentityScorer
from lorasynth.world.bank_build import BankBuildConfig, identity_training_data
from lorasynth.world.identities import identity_seeds, validation_seeds
from lorasynth.world.lora_trainer import LoraTrainConfig, train_subject_loras

CANDIDATES = (("w2w", 1), ("w2w", 4), ("attn", 1), ("attn", 4))
# lr, samples a step, renders per identity: a recipe that keeps them is labelled by preset alone
DEFAULT_RECIPE = (3e-3, 2, 8)


@dataclass(frozen=True)
class Recipe:
    """How a probe trains its LoRAs; `steps` lists the step counts to score (one run, the
    longest, snapshotted at each)."""

    preset: str
    rank: int
    steps: tuple[int, ...] = (200,)
    lr: float = 3e-3
    samples_per_subject: int = 2
    images_per_identity: int = 8

    def __post_init__(self) -> None:
        if not self.steps or min(self.steps) < 1:
            raise LorasynthError(f"a recipe needs positive step counts, got {self.steps}")

    @classmethod
    def from_dict(cls, values: dict) -> Recipe:
        values = dict(values)
        steps = values.pop("steps", (200,))
        values["steps"] = tuple(sorted({int(n) for n in np.atleast_1d(steps)}))
        return cls(**values)

    def label(self, steps: int) -> str:
        name = f"{self.preset} r{self.rank}"
        if (self.lr, self.samples_per_subject, self.images_per_identity) != DEFAULT_RECIPE:
            name += (
                f" lr {self.lr:g} {self.samples_per_subject}/step "
                f"{self.images_per_identity} renders"
            )
        return name if len(self.steps) == 1 else f"{name} @{steps}"

    def bank_config(self, steps: int | None = None) -> BankBuildConfig:
        """The bank build config that trains exactly this recipe for `steps` (default: all)."""
        return BankBuildConfig(
            images_per_identity=self.images_per_identity,
            lora=LoraTrainConfig(
                preset=self.preset,
                rank=self.rank,
                steps=steps or max(self.steps),
                lr=self.lr,
                samples_per_subject=self.samples_per_subject,
            ),
        )


def probe_seeds(split: str, identities: int) -> list[int]:
    return (
        validation_seeds(identities) if split == "validation" else identity_seeds(split, identities)
    )


def probe(
    identities: int = 16,
    recipes: Sequence[Recipe] = tuple(Recipe(p, r) for p, r in CANDIDATES),
    images_per_identity: int = 4,
    split: str = "train",
    prompts: tuple[str, ...] = ("a photo of sks person",),
    device: str = "cpu",
    budget_s: float | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> dict:
    """Image i of an identity uses prompts[i % len(prompts)]; top-1 is among the probe's own
    identities, and prompt fidelity is scored on the images whose prompt names a background
    (so `--split validation --identities 100 --eval-prompts` measures acceptance-style numbers
    on identities nothing is evaluated on). Recipes that would start after `budget_s` seconds
    are skipped (listed under "skipped"); `on_result` sees the results after every recipe."""
    from lorasynth.world.pipeline_io import load_pipeline

    if device == "cpu":
        torch.set_num_threads(1)
    start_all = time.perf_counter()
    pipe = load_pipeline(mini_world_dir() / "pipeline").to(device)
    seeds = probe_seeds(split, identities)
    scorer = IdentityScorer(pipe, seeds, prompts, images_per_identity)
    base_layout = LoraLayout.from_unet(pipe.unet, "w2w", 1)
    results: dict = {"base": scorer.score([None] * identities, base_layout), "device": device}
    for recipe in recipes:
        if budget_s is not None and time.perf_counter() - start_all > budget_s:
            results.setdefault("skipped", []).append(recipe.label(max(recipe.steps)))
            continue
        layout = LoraLayout.from_unet(pipe.unet, recipe.preset, recipe.rank)
        config = recipe.bank_config()
        data = [identity_training_data(s, config) for s in seeds]
        start = time.perf_counter()
        _, log = train_subject_loras(
            pipe,
            layout,
            np.stack([d[0] for d in data]),
            [d[1] for d in data],
            config.lora,
            progress=False,
            snapshots=recipe.steps,
        )
        seconds = time.perf_counter() - start
        for steps in recipe.steps:
            results[recipe.label(steps)] = {
                **scorer.score(log["snapshots"][steps], layout),
                "values": layout.size,
                "bytes_per_lora_fp32": layout.size * 4,
                "steps": steps,
                "bank_config": recipe.bank_config(steps).to_dict(),
                "train_seconds_per_lora": seconds * steps / max(recipe.steps) / identities,
                "loss_last": float(np.mean(log["loss"][max(0, steps - 10) : steps])),
            }
        if on_result is not None:
            on_result(results)
    results["seconds"] = time.perf_counter() - start_all
    return results


def _recipes(args: argparse.Namespace) -> list[Recipe]:
    if args.recipes:
        text = Path(args.recipes).read_text() if Path(args.recipes).is_file() else args.recipes
        try:
            return [Recipe.from_dict(r) for r in json.loads(text)]
        except (ValueError, TypeError) as exc:
            raise LorasynthError(f"--recipes: not a JSON list of recipes ({exc})") from None
    pairs = [(p, int(r)) for p, _, r in (c.partition(":") for c in args.candidates.split(","))]
    return [Recipe(p, r, (args.steps,), args.lr) for p, r in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--identities", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--split", choices=["train", "validation", "heldout"], default="train")
    parser.add_argument("--images", type=int, default=4, help="images per identity")
    parser.add_argument(
        "--eval-prompts",
        action="store_true",
        help="cycle through evaluate's prompts (with backgrounds) instead of the subject prompt",
    )
    parser.add_argument(
        "--candidates",
        default=",".join(f"{p}:{r}" for p, r in CANDIDATES),
        help="comma-separated PRESET:RANK pairs (trained with --steps and --lr)",
    )
    parser.add_argument(
        "--recipes",
        help='JSON list (or a file of one) of recipes, e.g. [{"preset": "attn-ff-conv", '
        '"rank": 1, "steps": [300, 1000], "lr": 3e-3, "samples_per_subject": 8, '
        '"images_per_identity": 32}]; replaces --candidates',
    )
    parser.add_argument("--device", default="cpu", help="torch device (e.g. cuda)")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="start no recipe after this many seconds"
    )
    args = parser.parse_args()
    try:
        recipes = _recipes(args)
    except LorasynthError as exc:
        parser.exit(2, f"error: {exc}\n")
    from lorasynth.evaluate.run import domain_prompts

    prompts = domain_prompts("faces") if args.eval_prompts else ("a photo of sks person",)
    results = probe(
        args.identities,
        recipes,
        args.images,
        args.split,
        prompts,
        args.device,
        args.budget_s,
        on_result=lambda partial: write_json_atomic(args.out, partial),
    )
    write_json_atomic(args.out, results)
    for name, row in results.items():
        if not isinstance(row, dict):
            continue
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
