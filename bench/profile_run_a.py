"""Where a no-op `dvcflow run-a` spends its wall-clock time, as a partition into slices.

A thread samples the main thread's stack every few milliseconds while `dvcflow run-a` runs in this
process; each sample goes to the first slice whose test matches the stack (imports first, so a lazy
import inside the flow counts as an import). Interpreter start-up and the exit after `main()` are
measured from outside. cProfile inflates import-heavy code several times, which is why this samples.

    .venv/bin/python bench/profile_run_a.py REPO [--rounds 3]    # prints a table, JSON with --json

Run it against a no-op repository (DVC already up to date) and a running dvcflow server (the
DVCFLOW_* variables of the environment choose it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

INTERVAL_S = 0.002

# (slice, test on the stack's (file, function) pairs, outermost first); the first match wins.
SLICES: tuple[tuple[str, str, str], ...] = (
    ("imports (Prefect and what it loads lazily)", "<frozen importlib._bootstrap>", "_find_and_load"),
    ("dvc repro process (waiting for it: repro, metrics read)", "dvcflow/dvc/", ""),
    ("metrics summary task (log, artifact)", "dvcflow/flows/repro.py", "metrics_summary_task"),
    ("read-back of the flow and task runs", "dvcflow/api/execution.py", "_final_task_runs"),
    ("read-back of the flow and task runs", "dvcflow/api/execution.py", "_returned"),
    ("orphaned-run check", "dvcflow/api/crash.py", "crash_orphaned_runs"),
    ("Prefect task engine (task-run states, API)", "prefect/task_engine.py", ""),
    ("Prefect flow engine (flow run, states, API)", "prefect/flow_engine.py", ""),
    ("settings and API connection", "dvcflow/api/execution.py", "_execute"),
    ("repository checks, server health", "dvcflow/services/launch.py", "_prepare"),
    ("run summary (render)", "dvcflow/cli/render/", ""),
    ("CLI parsing and the rest", "", ""),
)


def _classify(stack: list[tuple[str, str]]) -> str:
    for label, path, function in SLICES:
        for filename, name in stack:
            if path in filename and (not function or name == function):
                return label
    return SLICES[-1][0]


def _child(argv: list[str]) -> None:
    """Run `dvcflow ARGV` here while sampling; print one JSON line with the slices and timestamps."""
    began = time.time()
    main_thread = threading.main_thread().ident
    counts: Counter[str] = Counter()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(INTERVAL_S):
            frame: FrameType | None = sys._current_frames().get(main_thread or 0)
            stack: list[tuple[str, str]] = []
            while frame is not None:
                stack.append((frame.f_code.co_filename, frame.f_code.co_name))
                frame = frame.f_back
            counts[_classify(stack[::-1])] += 1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sys.argv = ["dvcflow", *argv]
    started = time.perf_counter()
    code = 0
    try:
        from dvcflow.cli.app import main

        main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    in_main = time.perf_counter() - started
    done.set()
    sampler.join()
    total = sum(counts.values()) or 1
    slices = {label: in_main * n / total for label, n in counts.items()}
    report = {"began": began, "ended": time.time(), "code": code, "slices": slices}
    print(json.dumps(report), file=sys.__stdout__)
    sys.__stdout__.flush()


def profile(repo: Path, rounds: int, env: dict[str, str] | None = None) -> dict[str, float]:
    """Median seconds per slice over `rounds` no-op runs of `dvcflow run-a` in `repo`."""
    per_round: list[dict[str, float]] = []
    for _ in range(rounds):
        launched = time.time()
        result = subprocess.run(
            [sys.executable, __file__, "--child", "run-a"],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        finished = time.time()
        line = next((ln for ln in result.stdout.splitlines() if ln.startswith('{"began"')), None)
        if result.returncode != 0 or line is None:
            output = f"{result.stdout}\n{result.stderr}"
            raise SystemExit(f"profiled run-a failed ({result.returncode}):\n{output}")
        data = json.loads(line)
        slices = dict(data["slices"])
        slices["interpreter start-up"] = data["began"] - launched
        slices["exit (Prefect's exit handlers, interpreter shutdown)"] = finished - data["ended"]
        slices["total (wall clock)"] = finished - launched
        per_round.append(slices)
    labels = {label for slices in per_round for label in slices}
    medians = {label: statistics.median(s.get(label, 0.0) for s in per_round) for label in labels}
    return dict(sorted(medians.items(), key=lambda item: -item[1]))


def table(medians: dict[str, float]) -> str:
    total = medians["total (wall clock)"]
    lines = ["| slice | seconds | share |", "| --- | ---: | ---: |"]
    for label, seconds in medians.items():
        if label != "total (wall clock)" and seconds >= 0.005:
            lines.append(f"| {label} | {seconds:.2f} | {100 * seconds / total:.0f} % |")
    lines.append(f"| **total (wall clock)** | **{total:.2f}** | 100 % |")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("repo", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    medians = profile(options.repo, options.rounds, dict(os.environ))
    print(json.dumps(medians, indent=2) if options.json else table(medians))


if __name__ == "__main__":
    main()
