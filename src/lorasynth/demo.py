"""`make demo` / `lorasynth demo`: zero-shot LoRAs for held-out mini-world subjects, in minutes.

With the shipped mini-world (assets/mini-world: pipeline, embedders, bank, priors) it takes a
handful of held-out identities, synthesizes each one's LoRA from one photo with every method,
generates images with three prompts, and writes DEMO/report.md and DEMO/grid.png. Every other
built domain (products: assets/mini-world/products/) follows with a few subjects of its own in
DEMO/<domain>/ (a section of DEMO/report.md); a domain not built is one line saying how to build
it. Without any built domain (a checkout whose `world build` has not run), it shows the
foundation instead:

1. The Stable Diffusion 1.5 UNet's `w2w` layout (built from its config on the meta device).
2. A folder of LoRAs in diffusers, kohya and PEFT files, random but at real SD1.5 shapes,
   each stored with a different but equivalent factorisation.
3. `bank ingest` into a sharded bank, `bank info`, `bank verify`, the normaliser.
4. Canonical vectors: equal for equal updates, whatever the file format or factorisation.
5. A bank row back out as a LoRA file, loaded by diffusers into a UNet, with the update checked.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from lorasynth.bank import Bank
from lorasynth.bank.ingest import ingest
from lorasynth.lora import (
    LoraFile,
    LoraLayout,
    LoraModule,
    flatten,
    unflatten,
    write_lora,
)

DEMO_UNET = {  # a small UNet with SD1.5's block structure, so loading runs in a second
    "sample_size": 8,
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}


def say(step: str) -> None:
    print(f"\n== {step}", flush=True)


def random_subject(layout: LoraLayout, seed: int) -> LoraFile:
    gen = torch.Generator().manual_seed(seed)
    return LoraFile(
        {
            r.module: LoraModule(
                torch.randn(r.rank, r.in_features, generator=gen) / r.in_features**0.5,
                torch.randn(r.out_features, r.rank, generator=gen) * 0.01,
                float(r.rank),
                r.kernel,
            )
            for r in layout.rows
        }
    )


def reparametrised(lora: LoraFile, factor: float) -> LoraFile:
    """The same updates stored differently: A scaled up, B down, alpha changed."""
    return LoraFile(
        {
            m: LoraModule(w.down * factor, w.up / (factor * 2), w.alpha * 2, w.kernel)
            for m, w in lora.modules.items()
        }
    )


def write_peft(folder: Path, lora: LoraFile) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, w in lora.modules.items():
        down, up = w.file_weights()
        tensors[f"base_model.model.{module}.lora_A.weight"] = down.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = up.contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    rank = next(iter(lora.modules.values())).rank
    alpha = next(iter(lora.modules.values())).alpha
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": alpha}))


# Domains after faces show fewer subjects and skip `optimize` (seconds a subject), so the demo
# stays within 5 minutes on 2 cores with every domain built.
OTHER_DOMAIN_IDENTITIES = 4
OTHER_DOMAIN_METHODS = ("base", "nearest", "lincomb", "ridge", "kernel", "diffusion", "trained")


def domains_not_built() -> dict[str, str | None]:
    """Each domain -> None when its models are built, else the line saying how to build them."""
    from lorasynth.domains import DOMAINS
    from lorasynth.evaluate.run import missing_models

    return {name: missing_models(name) for name in DOMAINS}


def mini_world_ready() -> bool:
    """Whether any domain's models are built (the faces mini-world or another)."""
    return any(line is None for line in domains_not_built().values())


def mini_world_demo(out: Path, identities: int = 8, config: dict | None = None) -> None:
    """Faces into OUT (report.md, grid.png), every other built domain into OUT/<domain>/, each
    a section of OUT/report.md. `config`: EvalConfig overrides for every domain (tests)."""
    from lorasynth.evaluate.run import EvalConfig, EvalModels, evaluate

    sections = []  # what OUT/report.md adds after the faces report
    for name, missing in domains_not_built().items():
        if missing:
            print(f"\n{name}: not built, not shown ({missing})")
            sections.append(f"## {name}\n\nNot shown: {missing}.\n")
            continue
        faces = name == "faces"
        models = EvalModels.shipped(name, ablations=False)  # the demo shows the shipped models
        n = identities if faces else min(identities, OTHER_DOMAIN_IDENTITIES)
        if models.heldout is not None:
            n = min(n, len(models.heldout))
        say(f"{name}: zero-shot LoRAs for {n} held-out mini-world subjects (one photo each)")
        overrides = {"ablations": False, "timing_repeats": 5, "gallery": 100, **(config or {})}
        if not faces:
            overrides.setdefault("methods", OTHER_DOMAIN_METHODS)
        folder = out if faces else out / name
        results = evaluate(folder, EvalConfig(identities=n, domain=name, **overrides), models)
        _show(folder, results)
        if not faces:
            sections.append(_section(name, results))
    report = out / "report.md"  # the faces report when faces are built
    head = report.read_text() if report.is_file() else "# lorasynth demo (mini-world)\n"
    report.write_text(head.rstrip("\n") + "\n\n" + "\n".join(sections))
    print(f"\nreport: {report}")


def _show(folder: Path, results: dict) -> None:
    """Print a domain's table and where its picture grid is (copied to FOLDER/grid.png)."""
    from lorasynth.evaluate.report import table

    grid = folder / "plots" / "grid.png"
    columns = grid.with_suffix(".txt")
    if grid.is_file():
        shutil.copyfile(grid, folder / "grid.png")
    print()
    print(table(results["methods"]))
    names = columns.read_text().strip() if columns.is_file() else ""
    print(f"\n{results['config']['domain']} pictures: {folder / 'grid.png'} ({names})")


def _section(name: str, results: dict) -> str:
    """A domain's section of DEMO/report.md (its own report is in DEMO/<name>/)."""
    from lorasynth.evaluate.report import table

    return (
        f"## {name}\n\n{results['n_identities']} held-out {name} subjects, one photo each "
        f"(full report: [{name}/report.md]({name}/report.md)).\n\n"
        f"{table(results['methods'])}\n\n![{name} grid]({name}/grid.png)\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo"))
    parser.add_argument(
        "--subjects", type=int, default=120, help="foundation demo: LoRAs to generate"
    )
    parser.add_argument(
        "--identities", type=int, default=8, help="mini-world demo: held-out identities"
    )
    parser.add_argument(
        "--foundation",
        action="store_true",
        help="run the foundation demo even if the mini-world is built",
    )
    args = parser.parse_args()
    run(args.out, args.subjects, args.identities, args.foundation)


def run(out: Path, subjects: int = 120, identities: int = 8, foundation: bool = False) -> None:
    shutil.rmtree(out, ignore_errors=True)
    if mini_world_ready() and not foundation:
        mini_world_demo(out, identities)
        return
    if not foundation:
        print(
            "note: the mini-world models are not built in this checkout (assets/mini-world); "
            "showing the foundation. Build them with `lorasynth world build`."
        )
    foundation_demo(out, subjects)


def foundation_demo(out: Path, subjects: int) -> None:

    say("1. the SD1.5 `w2w` layout (to_q, to_v of attn1 and attn2), rank 1")
    layout = LoraLayout.sd15("w2w", 1)
    print(f"{layout.describe()}; hash travels with every bank and vector")

    say(f"2. {subjects} subject LoRAs at SD1.5 shapes, in three formats")
    loras_dir = out / "loras"
    formats = ("diffusers", "kohya", "peft")
    for i in range(subjects):
        lora = random_subject(layout, seed=i)
        fmt = formats[i % 3]
        if fmt == "peft":
            write_peft(loras_dir / f"subject-{i:04d}", reparametrised(lora, 3.0))
        else:
            write_lora(
                loras_dir / f"subject-{i:04d}.safetensors",
                reparametrised(lora, 0.5 + i % 4),
                to=fmt,
            )
    (loras_dir / "corrupt.safetensors").write_bytes(b"not a LoRA")
    print(f"wrote {subjects} LoRAs (+1 corrupt file) under {loras_dir}")

    say("3. bank ingest (2 worker processes), info, verify")
    start = time.perf_counter()
    report = ingest(loras_dir, out / "bank", workers=2, chunk=64)
    took = time.perf_counter() - start
    for failure in report.failed:
        print(f"reported, not fatal: {failure['error']}")
    print(
        f"ingested {report.ingested} LoRAs in {took:.2f} s ({report.ingested / took:.0f}/s incl. reading)"
    )
    bank = Bank(out / "bank")
    info = bank.info()
    print(json.dumps({k: v for k, v in info.items() if k != "ids"}))
    print("verify:", bank.verify() or "ok", "| normaliser hash:", report.normaliser_hash)

    say("4. canonical vectors ignore format and factorisation")
    original = flatten(random_subject(layout, seed=1), layout)
    from_kohya = bank.vector("subject-0001")
    from_peft = bank.vector("subject-0002/adapter_model")
    rel = (from_kohya - original).norm() / original.norm()
    print(f"subject 1 stored as kohya with other factors: relative difference {rel:.1e}")
    assert rel < 1e-5, rel
    rel_peft = (
        from_peft - flatten(random_subject(layout, seed=2), layout)
    ).norm() / from_peft.norm()
    print(f"subject 2 stored as PEFT with other factors: relative difference {rel_peft:.1e}")
    assert rel_peft < 1e-5, rel_peft

    say("5. vector -> LoRA file -> diffusers UNet: the update is exactly B'A'")
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**DEMO_UNET)
    small = LoraLayout.from_unet(unet, "attn", 2)
    lora = random_subject(small, seed=7)
    path = write_lora(out / "small-subject.safetensors", unflatten(flatten(lora, small), small))
    base = {m: dict(unet.named_modules())[m].weight.detach().clone() for m in small.modules}
    unet.load_lora_adapter(str(path), prefix="unet")
    unet.fuse_lora()
    worst = 0.0
    for name, w in lora.modules.items():
        layer = dict(unet.named_modules())[name]
        fused = (layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer).weight
        worst = max(worst, ((fused.double() - base[name].double() - w.delta()).abs().max()).item())
    print(f"{len(small.rows)} modules updated; max |W' - (W + s B A)| = {worst:.1e}")
    print(f"\ndone: everything is under {out}/")


if __name__ == "__main__":
    main()
