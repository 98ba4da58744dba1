"""`make bench`: every benchmark, one after the other, printing ratios measured in this run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import (
    bench_bank_stream,
    bench_base_memory,
    bench_canonical,
    bench_embedders,
    bench_ingest,
    bench_synthesis,
)

if __name__ == "__main__":
    print("== canonicalization")
    bench_canonical.main()
    print("\n== bank ingest")
    bench_ingest.main()
    print("\n== synthesis")
    bench_synthesis.main()
    print("\n== bank baselines: in memory vs streamed")
    bench_bank_stream.main()
    print("\n== base model memory")
    bench_base_memory.main()
    print("\n== face embedders")
    bench_embedders.main()
