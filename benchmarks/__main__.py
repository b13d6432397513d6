"""`make bench`: every benchmark, each printing its figures beside a baseline of the same run."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("bench_model", "bench_shift", "bench_ingest", "bench_instructions",
              "bench_throughput", "bench_console", "bench_import", "bench_startup", "bench_pager",
              "bench_repage")


def main() -> int:
    sys.argv = sys.argv[:1]
    for name in BENCHMARKS:
        print(f"\n== {name}", flush=True)
        importlib.import_module(f"benchmarks.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
