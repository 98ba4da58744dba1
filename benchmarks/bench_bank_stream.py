"""Bank baselines with the bank in memory vs read from its memory-mapped shards.

A bank within `synthesis.IN_MEMORY_BANK_BYTES` is read into memory once; a larger one (SD1.5
w2w: 65k x 99,648 values, 26 GB) is read row by row. Both modes run here on the same mini-world
bank (the streamed one forced), each in a fresh child process: milliseconds a LoRA (vectors
only, models loaded and maps made, median of 10 subjects) and the child's peak RSS, which
includes the shard pages it touched. Run: `python benchmarks/bench_bank_stream.py [BANK]`
(default: the 3,000-subject bank in build/ if built, else the shipped 500).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, resource, statistics, sys, time
import torch
import lorasynth.synthesis as synthesis
from lorasynth.domains import get_domain
from lorasynth.synthesis import Synthesizer

torch.set_num_threads(1)
mode, bank = sys.argv[1], sys.argv[2]
if mode == "streamed":
    synthesis.IN_MEMORY_BANK_BYTES = 0
synth = Synthesizer.load(bank=bank)
dom = get_domain("faces")
conds = [
    synth.embed([im for im, _ in dom.render_identity(100_000 + i, 1, dom.eval_condition_photos)])[None]
    for i in range(10)
]
out = {"rows": len(synth.bank), "dim": synth.bank.dim}
for method in ("nearest", "lincomb", "kernel"):
    synth.vectors_for(conds[0], method)  # maps made first, as synthesize does before timing
    times = []
    for c in conds:
        start = time.perf_counter()
        synth.vectors_for(c, method)
        times.append((time.perf_counter() - start) * 1000)
    out[method] = statistics.median(times)
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def _child(mode: str, bank: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(bank)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(bank: Path | None = None) -> None:
    if bank is None:
        built = ROOT / "build" / "mini-world" / "bank"
        bank = built if (built / "manifest.json").is_file() else ROOT / "assets/mini-world/bank"
    memory, streamed = _child("in-memory", bank), _child("streamed", bank)
    print(f"bank {bank.name}: {memory['rows']:,} rows x {memory['dim']:,} values")
    print(f"{'method':8} {'in memory':>10} {'streamed':>10} {'ratio':>6}")
    for method in ("nearest", "lincomb", "kernel"):
        a, b = memory[method], streamed[method]
        print(f"{method:8} {a:8.1f} ms {b:8.1f} ms {b / a:5.1f}x")
    print(
        f"peak RSS: in memory {memory['peak_rss_mb']:.0f} MB, streamed "
        f"{streamed['peak_rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
