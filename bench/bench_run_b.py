"""No-change runs, timed in one session: `dvcflow run-b` (Prefect caching) vs `dvcflow run-a` vs `dvc repro`.

Target: a no-change `run-b` is no slower than a no-change `run-a`. Everything goes through the public
command lines, as a user would type them, against a dvcflow server started for the benchmark (own
DVCFLOW_HOME in a temporary folder, a free port) on a generated 50-stage chain (s00 → … → s49).

    .venv/bin/python bench/bench_run_b.py [--repeat 7] [--keep]

Prints medians and ratios against the bare `dvc repro`; writes the samples to bench/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from bench.timing import CpuUnder, bench_server, write_result  # noqa: E402
from bench.timing import run_command as _run  # noqa: E402
from tests.helpers import make_chain_repo  # noqa: E402

RESULTS = PROJECT / "bench" / "results"
UP_TO_DATE = "Data and pipelines are up to date."
CHAIN = 50


def _run_b_cached(result: subprocess.CompletedProcess[str]) -> bool:
    return len(re.findall(r"│ s\d\d\s+│ Cached ", result.stdout)) == CHAIN


def _run_a_skipped(result: subprocess.CompletedProcess[str]) -> bool:
    return UP_TO_DATE in result.stderr and "Running stage" not in result.stderr


def _dvc_skipped(result: subprocess.CompletedProcess[str]) -> bool:
    return UP_TO_DATE in result.stdout and "Running stage" not in result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args()

    python = sys.executable
    commands: dict[str, tuple[list[str], Callable[[subprocess.CompletedProcess[str]], bool]]] = {
        "dvcflow run-b": ([python, "-m", "dvcflow", "run-b"], _run_b_cached),
        "dvcflow run-a": ([python, "-m", "dvcflow", "run-a"], _run_a_skipped),
        "dvc repro": ([python, "-m", "dvc", "repro"], _dvc_skipped),
    }
    with bench_server("run-b", keep=options.keep) as (workdir, env):
        repo = make_chain_repo(workdir / "chain", env, CHAIN)
        # Warm-up: DVC brings dvc.lock up to date, run-b fills its cache, every command then has no work.
        for args, _ in commands.values():
            _run(args, repo, env)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}  # user+sys, the process tree
        # ... and of every process working in the repository, polled: a command the warm starter
        # serves runs in its forked child, not in a child of this process
        polled: dict[str, list[float]] = {name: [] for name in commands}
        load_before = os.getloadavg()
        for round_no in range(options.repeat):
            names = list(commands)
            names = names[round_no % 3 :] + names[: round_no % 3]  # rotate: no command always goes first
            for name in names:
                args, no_change = commands[name]
                with CpuUnder(repo) as probe:
                    seconds, result = _run(args, repo, env, cpu=cpu[name])
                polled[name].append(probe.seconds)
                if not no_change(result):
                    output = f"{result.stdout}\n{result.stderr}"
                    raise SystemExit(f"`{name}` did work on a no-change run:\n{output}")
                samples[name].append(seconds)
        load_after = os.getloadavg()

    medians = {name: statistics.median(values) for name, values in samples.items()}
    cpu_medians = {
        name: statistics.median(max(tree, seen) for tree, seen in zip(cpu[name], polled[name], strict=True))
        for name in cpu
    }
    baseline = medians["dvc repro"]
    print(f"No-change runs, {options.repeat} rounds each, interleaved (load {load_before[0]:.2f}):")
    for name, values in samples.items():
        print(
            f"  {name:<14} median {medians[name]:6.2f}s  min {min(values):6.2f}s  max {max(values):6.2f}s"
            f"  x{medians[name] / baseline:5.2f} vs dvc repro  (CPU median {cpu_medians[name]:5.2f}s)"
        )
    ratio = medians["dvcflow run-b"] / medians["dvcflow run-a"]
    met = ratio <= 1.0
    print(f"run-b / run-a = {ratio:.2f} → target (≤ 1.00) {'met' if met else 'NOT met'}")

    write_result(
        RESULTS,
        "run_b",
        "no-change run-b vs run-a vs dvc repro",
        repeat=options.repeat,
        load_before=load_before,
        load_after=load_after,
        samples_s=samples,
        median_s=medians,
        cpu_samples_s=cpu,
        cpu_polled_samples_s=polled,
        cpu_median_s=cpu_medians,
        ratio_vs_dvc_repro={name: value / baseline for name, value in medians.items()},
        run_b_over_run_a=ratio,
        target_met=met,
    )


if __name__ == "__main__":
    main()
