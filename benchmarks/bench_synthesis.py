"""Time-to-LoRA and batched synthesis throughput, at mini-world and real SD1.5 `w2w` sizes.

Time-to-LoRA = photo bytes in -> LoRA file written, models already loaded, median of many, at
the default sampling settings (lorasynth.models.defaults), and at the old 25 steps for the ratio.
Goals (issue 5): <= 100 ms in the mini-world and <= 300 ms at SD1.5 `w2w` size (99,648
values, latent 512) on 2 CPU cores. Real-size models are randomly initialised at the real size:
speed does not depend on the weights. A per-subject LoRA training run is timed in the same run
for the ratio (on the mini-world pipeline when it is built, else on a tiny random one).
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from lorasynth.bank import NORMALISER_FILE, Bank, Normaliser
from lorasynth.bank.conditions import CONDITIONS_FILE, ConditionTable
from lorasynth.faces.mini import PRESETS, MiniEmbedder, save_embedder
from lorasynth.lora import LoraLayout, unflatten
from lorasynth.models.defaults import PRIOR_GUIDANCE, PRIOR_STEPS
from lorasynth.models.denoiser import Denoiser, DenoiserConfig
from lorasynth.models.representation import VaeRepresentation
from lorasynth.models.vae import LoraVAE, LoraVAEConfig
from lorasynth.synthesis import Prior, Synthesizer
from lorasynth.world.render import render_identity


def photo_bytes(seed: int = 123) -> bytes:
    image, _ = render_identity(seed, 1)[0]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def random_synthesizer(
    root: Path, layout: LoraLayout, latent: int, hidden: int, width: int, depth: int
) -> Synthesizer:
    """A Synthesizer of the given sizes with random weights and a 64-row random bank."""
    torch.manual_seed(0)
    embedder = MiniEmbedder(PRESETS["mini-arcface"]).eval()
    save_embedder(embedder, root / "embedder.safetensors")
    rows = 64
    vectors = torch.randn(rows, layout.size) * 0.01
    bank = Bank.create(root / "bank", layout)
    ids = [f"s{i}" for i in range(rows)]
    bank.append(ids, vectors)
    Normaliser.fit([vectors], layout.hash).save(bank.path / NORMALISER_FILE)
    cond = torch.nn.functional.normalize(torch.randn(rows, 2, embedder.config.embed_dim), dim=-1)
    ConditionTable(ids, cond, embedder.embedder_id).save(bank.path / CONDITIONS_FILE)
    synth = Synthesizer(Bank(bank.path), embedder)
    vae = LoraVAE(LoraVAEConfig(layout.size, latent, hidden, 2)).eval()
    model = Denoiser(
        DenoiserConfig(latent, embedder.config.embed_dim, width, depth, "adalora", 4, 128)
    ).eval()
    synth.prior = Prior(
        model, VaeRepresentation(vae, "random"), torch.zeros(latent), torch.ones(latent), "random"
    )
    return synth


def time_to_lora(
    synth: Synthesizer,
    out_dir: Path,
    method: str,
    repeats: int,
    steps: int = PRIOR_STEPS,
    guidance: float = PRIOR_GUIDANCE,
) -> float:
    photo = photo_bytes()
    kwargs = {"steps": steps, "guidance": guidance}
    synth.synthesize([photo], method, out=out_dir / "warm.safetensors", **kwargs)  # warm-up
    times = [
        synth.synthesize(
            [photo], method, seed=i, out=out_dir / f"{method}.safetensors", **kwargs
        ).time_ms
        for i in range(repeats)
    ]
    return statistics.median(times)


def throughput(synth: Synthesizer, batch: int) -> float:
    cond = torch.nn.functional.normalize(torch.randn(batch, synth.bank_embeddings.shape[1]), dim=-1)
    start = time.perf_counter()
    vectors = synth.vectors_for(
        cond, "diffusion", seed=0, guidance=PRIOR_GUIDANCE, steps=PRIOR_STEPS
    )
    for v in vectors:
        unflatten(v, synth.layout)
    return batch / (time.perf_counter() - start)


def trained_lora_seconds(steps: int = 200) -> tuple[float, str]:
    """One subject's LoRA trained from one photo: the slow path synthesis replaces."""
    from lorasynth.paths import mini_world_dir
    from lorasynth.world.lora_trainer import LoraTrainConfig, train_subject_loras
    from lorasynth.world.pipeline_io import load_pipeline

    pipeline = mini_world_dir() / "pipeline"
    if not (pipeline / "model_index.json").is_file():
        return float("nan"), "mini-world pipeline not built"
    pipe = load_pipeline(pipeline)
    layout = LoraLayout.from_unet(pipe.unet, "w2w", 1)
    image, _ = render_identity(123, 1)[0]
    config = LoraTrainConfig(preset="w2w", rank=1, steps=steps, samples_per_subject=4)
    _, log = train_subject_loras(
        pipe, layout, image[None, None], [["a photo of sks person"]], config, progress=False
    )
    return log["seconds"], f"mini-world pipeline, {steps} steps"


def main() -> dict:
    torch.set_num_threads(int(os.environ.get("LORASYNTH_BENCH_THREADS", "2")))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sizes = {
            "SD1.5 w2w (99,648 values, latent 512)": (
                LoraLayout.sd15("w2w", 1),
                512,
                1024,
                1024,
                6,
            ),
            "mini-world size (latent 64)": (None, 64, 512, 256, 4),
        }
        for name, (layout, latent, hidden, width, depth) in sizes.items():
            if layout is None:
                from lorasynth.paths import mini_world_dir

                bank_dir = mini_world_dir() / "bank"
                if not (bank_dir / "layout.json").is_file():
                    print(f"{name}: skipped (mini-world bank not built)")
                    continue
                layout = Bank(bank_dir).layout
            root = tmp / name.split()[0]
            root.mkdir()
            synth = random_synthesizer(root, layout, latent, hidden, width, depth)
            for method in ("diffusion", "nearest", "lincomb", "ridge", "kernel"):
                ms = time_to_lora(synth, root, method, repeats=15)
                results[(name, method)] = ms
                print(f"{name:40} {method:10} time-to-LoRA median {ms:8.1f} ms")
            # The defaults before they were measured (25 steps, no guidance), for the ratio.
            ms = time_to_lora(synth, root, "diffusion", repeats=15, steps=25, guidance=1.0)
            results[(name, "diffusion-25-steps-g1")] = ms
            print(f"{name:40} {'(25 st, g1)':10} time-to-LoRA median {ms:8.1f} ms")
            for batch in (1, 16, 256):
                rate = throughput(synth, batch)
                results[(name, f"batch{batch}")] = rate
                print(f"{name:40} batch {batch:<4} diffusion throughput {rate:8.1f} LoRAs/s")
        seconds, how = trained_lora_seconds()
        if seconds == seconds:  # not NaN
            best = min(v for (n, m), v in results.items() if m == "diffusion")
            print(
                f"trained LoRA ({how}): {seconds:.1f} s; synthesis is {seconds * 1000 / best:,.0f}x faster"
            )
        else:
            print(f"trained LoRA: skipped ({how})")
    return results


if __name__ == "__main__":
    main()
