"""`dvcflow run-a --per-stage`, timed in one session against the alternatives it replaces.

1. Wide pipeline, 4 branches sleeping 2 s plus a join, everything to reproduce:
   `dvcflow run-a --per-stage --jobs 4` ÷ bare `dvc repro` — target ≤ 0.45 (≤ 0.32 with `--sleep 10`).
2. 50-stage chain, nothing changed: `dvcflow run-a --per-stage` ÷ plain `dvcflow run-a` — target ≤ 1.2.

Everything goes through the public command lines against a dvcflow server started for the benchmark
(own DVCFLOW_HOME in a temporary folder, a free port), on generated git+DVC repositories. Rounds are
interleaved so that a busy machine slows every command alike; each wide round starts from a fresh copy.

    .venv/bin/python bench/bench_per_stage.py [--repeat 3] [--sleep 2] [--keep]

Prints medians and ratios; writes the samples to bench/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from bench.timing import bench_server  # noqa: E402
from bench.timing import run_command as _run  # noqa: E402
from tests.helpers import git, make_chain_repo, make_wide_repo  # noqa: E402

RESULTS = PROJECT / "bench" / "results"
BRANCHES = 4
CHAIN = 50


def _overlap(repo: Path) -> float:
    """Seconds during which all branches were sleeping at once."""
    spans = [json.loads((repo / f"out/branch-{i}.json").read_text()) for i in range(BRANCHES)]
    return max(0.0, min(s["end"] for s in spans) - max(s["start"] for s in spans))


def _median(samples: list[float]) -> float:
    return round(statistics.median(samples), 3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds per command (default 3)")
    parser.add_argument(
        "--sleep", type=float, default=2.0, help="seconds each wide branch sleeps (default 2)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args()

    python = sys.executable
    dvcflow = [python, "-m", "dvcflow"]
    per_stage_wide = [*dvcflow, "run-a", "--per-stage", "--jobs", str(BRANCHES)]
    samples: dict[str, list[float]] = {
        "wide: dvc repro": [],
        "wide: dvcflow run-a": [],
        "wide: dvcflow run-a --per-stage --jobs 4": [],
        "chain no-change: dvc repro": [],
        "chain no-change: dvcflow run-a": [],
        "chain no-change: dvcflow run-a --per-stage": [],
    }
    overlaps: list[float] = []
    with bench_server("per-stage", keep=options.keep) as (workdir, env):
        template = make_wide_repo(workdir / "wide-template", env, branches=BRANCHES, sleep=options.sleep)
        git(template, "add", "-A", env=env)
        git(template, "commit", "-q", "-m", "pipeline", env=env)
        chain = make_chain_repo(workdir / "chain", env, CHAIN)
        _run([python, "-m", "dvc", "repro"], chain, env)
        # Warm-up: the first flow run of each flow registers it and fills caches on both sides.
        _run([*dvcflow, "run-a", "--per-stage"], chain, env)
        _run([*dvcflow, "run-a"], chain, env)

        for round_number in range(options.repeat):
            for label, args in (
                ("wide: dvc repro", [python, "-m", "dvc", "repro"]),
                ("wide: dvcflow run-a", [*dvcflow, "run-a"]),
                ("wide: dvcflow run-a --per-stage --jobs 4", per_stage_wide),
            ):
                repo = workdir / f"wide-{round_number}-{len(samples[label])}-{label.split()[-1]}"
                shutil.copytree(template, repo)
                seconds, result = _run(args, repo, env)
                samples[label].append(seconds)
                if "--per-stage" in args:
                    assert "5 ran, 0 up to date, 0 failed, 0 not run" in result.stderr, result.stderr
                    overlaps.append(_overlap(repo))
            for label, args, check in (
                (
                    "chain no-change: dvc repro",
                    [python, "-m", "dvc", "repro"],
                    "Data and pipelines are up to date.",
                ),
                ("chain no-change: dvcflow run-a", [*dvcflow, "run-a"], "Data and pipelines are up to date."),
                (
                    "chain no-change: dvcflow run-a --per-stage",
                    [*dvcflow, "run-a", "--per-stage"],
                    f"0 ran, {CHAIN} up to date, 0 failed, 0 not run",
                ),
            ):
                seconds, result = _run(args, chain, env)
                assert check in result.stdout + result.stderr, result.stdout + result.stderr
                assert not re.search(r"Running (stage|: dvc)", result.stderr)
                samples[label].append(seconds)

    medians = {label: _median(values) for label, values in samples.items()}
    ratios = {
        "wide: per-stage --jobs 4 / dvc repro (target <= 0.45 at 2 s, 0.32 at 10 s)": round(
            medians["wide: dvcflow run-a --per-stage --jobs 4"] / medians["wide: dvc repro"], 3
        ),
        "chain no-change: per-stage / run-a (target <= 1.2)": round(
            medians["chain no-change: dvcflow run-a --per-stage"] / medians["chain no-change: dvcflow run-a"],
            3,
        ),
    }
    report = {
        "benchmark": "per-stage",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {name: metadata.version(name) for name in ("dvc", "prefect", "dvcflow")},
        "branches": BRANCHES,
        "branch_sleep_s": options.sleep,
        "chain_stages": CHAIN,
        "repeat": options.repeat,
        "samples_s": {label: [round(v, 3) for v in values] for label, values in samples.items()},
        "medians_s": medians,
        "branch_overlap_s": [round(v, 3) for v in overlaps],
        "ratios": ratios,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"per_stage-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    width = max(map(len, medians))
    for label, value in medians.items():
        print(f"{label:<{width}}  {value:7.2f} s  (samples {', '.join(f'{v:.2f}' for v in samples[label])})")
    for label, value in ratios.items():
        print(f"{label}: {value:.2f}")
    print(f"all four branches asleep at once for {', '.join(f'{v:.2f}' for v in overlaps)} s")
    print(f"wrote {out.relative_to(PROJECT)}")


if __name__ == "__main__":
    main()
