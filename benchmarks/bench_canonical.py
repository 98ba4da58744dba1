"""Canonicalization throughput at SD1.5 shapes, and its cost per parameter across layouts.

Goal (issue 3): >= 2,000 `w2w` rank-1 LoRAs per second on 2 CPU cores, and
canonicalize + unflatten cost linear in the number of parameters (ns/param roughly constant).
"""

from __future__ import annotations

import time

import torch

from lorasynth.lora import LoraFile, LoraLayout, LoraModule, flatten_batch, unflatten


def random_loras(layout: LoraLayout, n: int) -> list[LoraFile]:
    gen = torch.Generator().manual_seed(0)
    return [
        LoraFile(
            {
                r.module: LoraModule(
                    torch.randn(r.rank, r.in_features, generator=gen),
                    torch.randn(r.out_features, r.rank, generator=gen),
                    float(r.rank),
                )
                for r in layout.rows
            }
        )
        for _ in range(n)
    ]


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> dict:
    torch.set_num_threads(2)
    results = {}
    print(f"torch threads: {torch.get_num_threads()}")
    print(
        f"{'layout':14} {'params':>9} {'batch':>6} {'LoRAs/s':>9} {'ns/param':>9} {'unflatten ns/param':>19}"
    )
    for preset, rank, n in [("w2w", 1, 2000), ("w2w", 4, 500), ("attn", 1, 500), ("attn", 4, 200)]:
        layout = LoraLayout.sd15(preset, rank)
        loras = random_loras(layout, n)
        t = best_of(lambda loras=loras, layout=layout: flatten_batch(loras, layout))
        vectors = flatten_batch(loras[:50], layout)
        t_un = best_of(lambda v=vectors, layout=layout: [unflatten(x, layout) for x in v]) / 50
        per_s = n / t
        ns_param = t / n / layout.size * 1e9
        ns_un = t_un / layout.size * 1e9
        name = f"{preset} r{rank}"
        print(f"{name:14} {layout.size:>9,} {n:>6} {per_s:>9,.0f} {ns_param:>9.2f} {ns_un:>19.2f}")
        results[name] = {
            "params": layout.size,
            "loras_per_s": per_s,
            "ns_per_param": ns_param,
            "unflatten_ns_per_param": ns_un,
        }
    print(
        f"goal >= 2,000 w2w r1 LoRAs/s: {results['w2w r1']['loras_per_s']:,.0f}/s "
        f"({'met' if results['w2w r1']['loras_per_s'] >= 2000 else 'NOT met'})"
    )
    for rank in (1, 4):
        ratio = results[f"attn r{rank}"]["ns_per_param"] / results[f"w2w r{rank}"]["ns_per_param"]
        print(
            f"linearity at rank {rank}: ns/param attn (2x params) / w2w = {ratio:.2f} (1.0 = linear)"
        )
    # Per-parameter cost grows with rank by design: O((in + out) r^2) per module is O(params * r).
    return results


if __name__ == "__main__":
    main()
