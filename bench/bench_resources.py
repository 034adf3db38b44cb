"""Resource-aware scheduling (issue 23): six 1 s stages of `gpu: 1` on a capacity of 2 GPUs.

    dvcflow run-a --per-stage --resource gpu=2 --jobs 6 --force

The ideal is 3 stage-lengths (three waves of two). The makespan is read from the stages' own start and
end timestamps (first start to last end: the scheduling between waves, not dvcflow's start-up), divided
by the ideal; target ≤ 1.15. The same six stages without declarations under `--jobs 2` (the same
concurrency, no resources, no Prefect concurrency limits) are timed in the same rounds, interleaved: the
difference is what the resources cost. Each round also checks that no more than 2 stages overlapped and
that overlapping stages never shared a `CUDA_VISIBLE_DEVICES` index.

    .venv/bin/python bench/bench_resources.py [--repeat 5] [--seconds 1]

Prints medians and ratios; writes the samples to bench/results/resources-*.json (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from bench.timing import bench_server, write_result  # noqa: E402
from bench.timing import run_command as _run  # noqa: E402
from tests.helpers import make_resource_repo, most_at_once, stage_spans, timed_stage  # noqa: E402

RESULTS = PROJECT / "bench" / "results"
STAGES = 6
CAPACITY = 2
TARGET = 1.15


def _repo(root: Path, env: dict[str, str], seconds: float, gpu: bool) -> Path:
    meta = {"resources": {"gpu": 1}} if gpu else None
    items = [str(i) for i in range(STAGES)]
    return make_resource_repo(
        root, env, {"train": {"foreach": items, "do": timed_stage("train-${item}", seconds, meta)}}
    )


def _makespan(repo: Path, check_gpus: bool) -> float:
    """First start to last end, after checking the round: all stages ran, never more than the capacity at
    once, and (`check_gpus`) no two overlapping stages on one GPU index."""
    spans = list(stage_spans(repo).values())
    intervals = [(float(str(span["start"])), float(str(span["end"]))) for span in spans]
    if len(intervals) != STAGES or most_at_once(intervals) > CAPACITY:
        raise SystemExit(f"{repo}: {len(intervals)} stages, up to {most_at_once(intervals)} at once")
    for i in range(len(spans)):
        for j in range(i + 1, len(spans)):
            (a0, a1), (b0, b1) = intervals[i], intervals[j]
            if check_gpus and a0 < b1 and b0 < a1 and spans[i]["gpus"] == spans[j]["gpus"]:
                raise SystemExit(f"{repo}: overlapping stages shared GPU {spans[i]['gpus']}")
    return max(end for _, end in intervals) - min(start for start, _ in intervals)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--seconds", type=float, default=1.0, help="each stage's length (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args()
    ideal = STAGES / CAPACITY * options.seconds
    dvcflow = [sys.executable, "-m", "dvcflow", "run-a", "--per-stage", "--force"]
    commands = {
        "gpu=1 stages, --resource gpu=2 --jobs 6": (
            [*dvcflow, "--resource", f"gpu={CAPACITY}", "--jobs", "6"],
            True,
        ),
        "the same stages undeclared, --jobs 2": ([*dvcflow, "--jobs", str(CAPACITY)], False),
    }
    makespans: dict[str, list[float]] = {name: [] for name in commands}
    walls: dict[str, list[float]] = {name: [] for name in commands}
    with bench_server("resources", keep=options.keep) as (workdir, env):
        repos = {
            name: _repo(workdir / f"repo{i}", env, options.seconds, gpu)
            for i, (name, (_, gpu)) in enumerate(commands.items())
        }
        for name, (args, _) in commands.items():  # warm-up: DVC's caches, the server's limits
            _run(args, repos[name], env)
        load_before = os.getloadavg()
        for round_no in range(options.repeat):
            names = list(commands)
            names = names[round_no % len(names) :] + names[: round_no % len(names)]
            for name in names:
                args, gpu = commands[name]
                seconds, _ = _run(args, repos[name], env)
                walls[name].append(round(seconds, 3))
                makespans[name].append(round(_makespan(repos[name], gpu), 3))
        load_after = os.getloadavg()

    main_name = next(iter(commands))
    ratios = [round(value / ideal, 3) for value in makespans[main_name]]
    ratio = statistics.median(ratios)
    load = load_before[0]
    print(
        f"{STAGES} stages of {options.seconds:g} s, capacity {CAPACITY}: ideal {ideal:g} s (load {load:.2f})"
    )
    for name in commands:
        median = statistics.median(makespans[name])
        print(
            f"  {name:<42} makespan median {median:5.2f}s (÷ ideal {median / ideal:4.2f}), "
            f"command {statistics.median(walls[name]):5.2f}s"
        )
    print(f"makespan ÷ ideal = {ratio:.2f} → target (≤ {TARGET}) {'met' if ratio <= TARGET else 'NOT met'}")

    write_result(
        RESULTS,
        "resources",
        "six gpu:1 stages on a capacity of 2: makespan ÷ ideal",
        repeat=options.repeat,
        load_before=load_before,
        load_after=load_after,
        stage_s=options.seconds,
        ideal_s=ideal,
        makespan_s=makespans,
        command_s=walls,
        ratios=ratios,
        makespan_over_ideal=ratio,
        target=TARGET,
        target_met=ratio <= TARGET,
    )


MIN_ROUNDS_FOR_A_CLAIM = 5  # as bench/run.py: fewer rounds are only indicative


def rows(result: dict[str, Any]) -> list[str]:
    """bench/run.py's table rows for this benchmark's result."""
    makespans: dict[str, list[float]] = result["makespan_s"]
    ratios: list[float] = result["ratios"]
    ideal = float(result["ideal_s"])
    gpu, plain = list(makespans)
    median = statistics.median(ratios)
    claim = "indicative" if len(ratios) < MIN_ROUNDS_FOR_A_CLAIM else "met" if median <= TARGET else "missed"
    undeclared = statistics.median(makespans[plain])
    return [
        f"| six 1 s `gpu: 1` stages on `--resource gpu=2 --jobs 6`: makespan (stages' own timestamps) ÷ the "
        f"ideal {ideal:g} s | {statistics.median(makespans[gpu]):.2f} s ÷ {ideal:g} s | {median:.2f} "
        f"({min(ratios):.2f}-{max(ratios):.2f}) — {claim} | {len(ratios)} | ≤ {TARGET} |",
        f"| the same stages undeclared under `--jobs 2` (no resources, no concurrency limits) | "
        f"{undeclared:.2f} s ÷ {ideal:g} s | {undeclared / ideal:.2f} | {len(makespans[plain])} | |",
    ]


if __name__ == "__main__":
    main()
