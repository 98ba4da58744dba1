"""Memory (RSS) of an SD1.5 UNet (random weights from the shipped config) with and without a LoRA.

Stages, each measured in the same fresh child process, in order: libraries imported; UNet
built (float32); a `w2w` rank-1 LoRA loaded as a PEFT adapter (unfused); the LoRA fused into
the weights; the adapter unloaded after fusing (plain weights again). Also a separate child that
loads an `attn` rank-8 LoRA, to show how the adapter's cost grows with its size.
Run: `python benchmarks/bench_base_memory.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import gc, json, os, sys
import psutil, torch
torch.set_num_threads(1)
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from lorasynth.lora import LoraLayout, unflatten, write_lora
from lorasynth.lora.layout import load_unet_config

preset, rank, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
proc = psutil.Process()
mb = lambda: proc.memory_info().rss / 2**20
out = {"imported": mb()}
unet = UNet2DConditionModel.from_config(load_unet_config("sd15")).eval()
gc.collect(); out["unet"] = mb()
out["unet_params"] = sum(p.numel() for p in unet.parameters())
layout = LoraLayout.from_unet(unet, preset, rank)
vector = 0.01 * torch.randn(layout.size, generator=torch.Generator().manual_seed(0))
write_lora(path, unflatten(vector, layout), to="kohya")
out["lora_values"] = layout.size
state, alphas = StableDiffusionPipeline.lora_state_dict(path)
unet.load_lora_adapter(state, prefix="unet", network_alphas=alphas, adapter_name="subject")
del state; gc.collect(); out["lora_loaded"] = mb()
unet.fuse_lora(lora_scale=1.0)
gc.collect(); out["lora_fused"] = mb()
unet.unload_lora()
gc.collect(); out["fused_unloaded"] = mb()
x = torch.randn(1, 4, 64, 64); ctx = torch.randn(1, 77, 768)
with torch.no_grad():
    unet(x, 10, encoder_hidden_states=ctx)
out["after_one_step_64x64"] = mb()
out["peak"] = __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def measure(preset: str, rank: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, preset, str(rank), str(Path(tmp) / "l.safetensors")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": tmp},
            check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> dict:
    results = {}
    for preset, rank in (("w2w", 1), ("attn", 8)):
        r = measure(preset, rank)
        results[f"{preset}-r{rank}"] = r
        unet = r["unet"] - r["imported"]
        print(
            f"SD1.5 UNet ({r['unet_params']:,} params, fp32), LoRA {preset} rank {rank} "
            f"({r['lora_values']:,} values):"
        )
        print(f"  libraries imported        {r['imported']:8.0f} MB RSS")
        print(f"  + UNet built              {r['unet']:8.0f} MB  (UNet itself {unet:.0f} MB)")
        print(
            f"  + LoRA loaded (unfused)   {r['lora_loaded']:8.0f} MB  "
            f"(+{r['lora_loaded'] - r['unet']:.0f} MB, x{r['lora_loaded'] / r['unet']:.3f})"
        )
        print(
            f"  + LoRA fused              {r['lora_fused']:8.0f} MB  "
            f"(+{r['lora_fused'] - r['unet']:.0f} MB vs no LoRA)"
        )
        print(
            f"  fused, adapter unloaded   {r['fused_unloaded']:8.0f} MB  "
            f"(+{r['fused_unloaded'] - r['unet']:.0f} MB vs no LoRA)"
        )
        print(
            f"  after one 64x64 step      {r['after_one_step_64x64']:8.0f} MB; peak {r['peak']:.0f} MB"
        )
    return results


if __name__ == "__main__":
    main()
