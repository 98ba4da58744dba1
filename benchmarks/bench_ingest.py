"""Bank ingest throughput: SD1.5 `w2w` rank-1 LoRA files on disk -> bank, 1 vs 2 workers."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.bench_canonical import random_loras
from lorasynth.bank.ingest import ingest
from lorasynth.lora import LoraLayout, write_lora


def main(n: int = 1000) -> dict:
    layout = LoraLayout.sd15("w2w", 1)
    root = Path(tempfile.mkdtemp(prefix="lorasynth-bench-"))
    try:
        folder = root / "loras"
        for i, lora in enumerate(random_loras(layout, n)):
            write_lora(folder / f"s{i:05d}.safetensors", lora, to="kohya" if i % 2 else "diffusers")
        results = {}
        for workers in (1, 2):
            bank = root / f"bank-{workers}"
            start = time.perf_counter()
            ingest(folder, bank, workers=workers, chunk=256, normalise=False, progress=False)
            took = time.perf_counter() - start
            results[workers] = n / took
            print(
                f"ingest {n} w2w files, {workers} worker(s): {n / took:,.0f} files/s ({took:.2f} s)"
            )
        print(f"speed-up of 2 workers over 1: {results[2] / results[1]:.2f}x")
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
