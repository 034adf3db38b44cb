"""Run every benchmark in bench/ in turn (what `make bench` calls); each prints its ratios and writes JSON
to bench/results/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = ("bench_run_b.py", "bench_per_stage.py", "bench_watchdog.py", "bench_sweep.py")


def main() -> int:
    here = Path(__file__).resolve().parent
    failed = 0
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        failed |= subprocess.run([sys.executable, str(here / name), *sys.argv[1:]]).returncode
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
