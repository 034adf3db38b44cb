"""`dvcflow run-a --per-stage`, timed in one session against the alternatives it replaces.

1. Wide pipeline, 4 branches plus a join, everything to reproduce: `dvcflow run-a --per-stage --jobs 4`
   ÷ bare `dvc repro`. The branches sleep S seconds (`--sleep`; target ≤ 0.30 at 2 s, ideal 0.25), or
   with `--cpu` burn S seconds of CPU each: then the cores bound the ratio (ideal 1 ÷ min(4, cores)),
   reported with the number of cores.
2. 50-stage chain, nothing changed: `dvcflow run-a --per-stage` ÷ plain `dvcflow run-a` — target ≤ 1.2
   (`--no-chain` skips it).

Everything goes through the public command lines against a dvcflow server started for the benchmark
(own DVCFLOW_HOME in a temporary folder, a free port), on generated git+DVC repositories. Rounds are
interleaved, their order rotated (each command goes first in turn), so that a busy machine slows every
command alike; each wide round starts from a fresh copy.

    .venv/bin/python bench/bench_per_stage.py [--repeat 5] [--sleep 2] [--cpu] [--no-plain] [--no-chain]

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

from bench.timing import bench_server, paired_ratios, rotated, spread  # noqa: E402
from bench.timing import run_command as _run  # noqa: E402
from tests.helpers import git, make_chain_repo, make_wide_repo  # noqa: E402

RESULTS = PROJECT / "bench" / "results"
BRANCHES = 4
CHAIN = 50
# A branch that works instead of sleeping: it burns `seconds` of its own CPU time (so that 4 of them on
# 2 cores take twice as long together), recording its span as the sleeping one does.
CPU_BRANCH_PY = """\
import json, sys, time
name, seconds = sys.argv[1], float(sys.argv[2])
start = time.time()
x = 0
while time.process_time() < seconds:
    for i in range(10000):
        x += i * i
with open(f"out/branch-{name}.json", "w") as f:
    json.dump({"start": start, "end": time.time()}, f)
"""


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
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds per command (default 5)")
    parser.add_argument(
        "--sleep", type=float, default=2.0, help="seconds each wide branch sleeps or works (default 2)"
    )
    parser.add_argument("--cpu", action="store_true", help="branches burn CPU instead of sleeping")
    parser.add_argument("--no-plain", action="store_true", help="no plain `run-a` on the wide pipeline")
    parser.add_argument("--no-chain", action="store_true", help="skip the no-change chain")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args()

    python = sys.executable
    dvcflow = [python, "-m", "dvcflow"]
    wide_commands = {
        "wide: dvc repro": [python, "-m", "dvc", "repro"],
        "wide: dvcflow run-a": [*dvcflow, "run-a"],
        "wide: dvcflow run-a --per-stage --jobs 4": [
            *dvcflow,
            "run-a",
            "--per-stage",
            "--jobs",
            str(BRANCHES),
        ],
    }
    if options.no_plain:
        del wide_commands["wide: dvcflow run-a"]
    up_to_date = "Data and pipelines are up to date."
    chain_commands = {
        "chain no-change: dvc repro": ([python, "-m", "dvc", "repro"], up_to_date),
        "chain no-change: dvcflow run-a": ([*dvcflow, "run-a"], up_to_date),
        "chain no-change: dvcflow run-a --per-stage": (
            [*dvcflow, "run-a", "--per-stage"],
            f"0 ran, {CHAIN} up to date, 0 failed, 0 not run",
        ),
    }
    if options.no_chain:
        chain_commands = {}
    samples: dict[str, list[float]] = {label: [] for label in [*wide_commands, *chain_commands]}
    overlaps: list[float] = []
    load_before = os.getloadavg()
    with bench_server("per-stage", keep=options.keep) as (workdir, env):
        template = make_wide_repo(workdir / "wide-template", env, branches=BRANCHES, sleep=options.sleep)
        if options.cpu:
            (template / "branch.py").write_text(CPU_BRANCH_PY)
        git(template, "add", "-A", env=env)
        git(template, "commit", "-q", "-m", "pipeline", env=env)
        # Warm-up: the first flow run of each flow registers it and fills caches on both sides.
        warm_up = workdir / "wide-warm-up"
        shutil.copytree(template, warm_up)
        _run(wide_commands["wide: dvcflow run-a --per-stage --jobs 4"], warm_up, env)
        chain = None
        if chain_commands:
            chain = make_chain_repo(workdir / "chain", env, CHAIN)
            _run([python, "-m", "dvc", "repro"], chain, env)
            _run([*dvcflow, "run-a", "--per-stage"], chain, env)
            _run([*dvcflow, "run-a"], chain, env)

        for round_number in range(options.repeat):
            for label in rotated(list(wide_commands), round_number):
                args = wide_commands[label]
                repo = workdir / f"wide-{round_number}-{label.split()[-1]}"
                shutil.copytree(template, repo)
                seconds, result = _run(args, repo, env)
                samples[label].append(seconds)
                if "--per-stage" in args:
                    assert "5 ran, 0 up to date, 0 failed, 0 not run" in result.stderr, result.stderr
                    overlaps.append(_overlap(repo))
            for label in rotated(list(chain_commands), round_number):
                args, check = chain_commands[label]
                assert chain is not None
                seconds, result = _run(args, chain, env)
                assert check in result.stdout + result.stderr, result.stdout + result.stderr
                assert not re.search(r"Running (stage|: dvc)", result.stderr)
                samples[label].append(seconds)

    medians = {label: _median(values) for label, values in samples.items()}
    per_stage = "wide: dvcflow run-a --per-stage --jobs 4"
    cores = os.cpu_count() or 1
    ratios = {
        "wide: per-stage --jobs 4 / dvc repro": paired_ratios(samples[per_stage], samples["wide: dvc repro"])
    }
    if chain_commands:
        ratios["chain no-change: per-stage / run-a"] = paired_ratios(
            samples["chain no-change: dvcflow run-a --per-stage"], samples["chain no-change: dvcflow run-a"]
        )
    ratio_rows = {label: spread(values) for label, values in ratios.items()}
    report = {
        "benchmark": "per-stage",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": cores,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "versions": {name: metadata.version(name) for name in ("dvc", "prefect", "dvcflow")},
        "branches": BRANCHES,
        "branch_kind": "cpu" if options.cpu else "sleep",
        "branch_sleep_s": options.sleep,
        # with 4 branches of S seconds and a join, against DVC's 4 S in a row
        "ideal_ratio": round(1 / min(BRANCHES, cores) if options.cpu else 1 / BRANCHES, 3),
        "chain_stages": CHAIN if chain_commands else 0,
        "repeat": options.repeat,
        "order": "rotated: each command first in turn",
        "samples_s": {label: [round(v, 3) for v in values] for label, values in samples.items()},
        "medians_s": medians,
        "paired_ratios": ratios,
        "ratios": ratio_rows,
        "branch_overlap_s": [round(v, 3) for v in overlaps],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    kind = "cpu" if options.cpu else "sleep"
    out = RESULTS / f"per_stage-{kind}-{options.sleep:g}s-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    width = max(map(len, medians))
    for label, value in medians.items():
        print(f"{label:<{width}}  {value:7.2f} s  (samples {', '.join(f'{v:.2f}' for v in samples[label])})")
    for label, row in ratio_rows.items():
        print(f"{label}: median {row['median']:.2f} ({row['min']:.2f}-{row['max']:.2f}, {row['n']} rounds)")
    print(
        f"all four branches at work at once for {', '.join(f'{v:.2f}' for v in overlaps)} s ({cores} cores)"
    )
    print(f"wrote {out.relative_to(PROJECT)}")


if __name__ == "__main__":
    main()
