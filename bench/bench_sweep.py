"""Four trials of the demo: `dvcflow sweep` against DVC's own queue, same values, same metrics.

    dvcflow sweep -S train.C=0.1,1,10,100 --jobs 2
    dvc exp run --queue -S train.C=0.1,1,10,100 && dvc exp run --run-all -j 2

Target: sweep ÷ queue ≤ 0.8 (wall time). Each round starts both from fresh git+DVC copies of the demo
(no DVC cache, no run cache), the order alternating between rounds; the dvcflow server is started for
the benchmark (own DVCFLOW_HOME, a free port). The metrics of every trial must agree between the two.

    .venv/bin/python bench/bench_sweep.py [--repeat 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from bench.timing import CpuUnder, bench_server, run_command, write_result  # noqa: E402
from tests.helpers import make_pipeline_repo  # noqa: E402

RESULTS = PROJECT / "bench" / "results"
VALUES = "0.1,1,10,100"
JOBS = 2
TARGET = 0.8


CPU_SECONDS: list[float] = []  # user+sys of each command's process tree (not the Prefect server's)


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    return run_command(args, cwd, env, timeout=1200, cpu=CPU_SECONDS)


def _sweep(repo: Path, env: dict[str, str]) -> tuple[float, dict[str, object]]:
    args = [
        sys.executable,
        "-m",
        "dvcflow",
        "sweep",
        "-S",
        f"train.C={VALUES}",
        "--jobs",
        str(JOBS),
        "--json",
    ]
    seconds, result = _run(args, repo, env)
    report = json.loads(result.stdout)
    return seconds, {str(trial["train.C"]): trial["accuracy"] for trial in report["trials"]}


def _dvc_queue(repo: Path, env: dict[str, str]) -> tuple[float, dict[str, object]]:
    dvc = [sys.executable, "-m", "dvc"]
    queued, _ = _run([*dvc, "exp", "run", "--queue", "-S", f"train.C={VALUES}"], repo, env)
    ran, _ = _run([*dvc, "exp", "run", "--run-all", "-j", str(JOBS)], repo, env)
    _, shown = _run([*dvc, "exp", "show", "--json"], repo, env)
    CPU_SECONDS.pop()  # reading the results back is not part of the run
    accuracy: dict[str, object] = {}
    for baseline in json.loads(shown.stdout):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                data = rev["data"]
                c = data["params"]["params.yaml"]["data"]["train"]["C"]
                accuracy[_as_given(c)] = data["metrics"]["reports/metrics.json"]["data"]["accuracy"]
    return queued + ran, accuracy


def _as_given(value: object) -> str:
    """C as it was typed on the command line: DVC stores 10 as an int and 0.1 as a float."""
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args()

    samples: dict[str, list[float]] = {"dvcflow sweep": [], "dvc exp queue": []}
    cpu: dict[str, list[float]] = {name: [] for name in samples}
    cpu_all: dict[str, list[float]] = {name: [] for name in samples}  # detached workers included
    with bench_server("sweep", keep=options.keep) as (workdir, env):
        env["TMPDIR"] = str(workdir / "tmp")  # the sweep's worktrees, so that `CpuUnder` sees them
        (workdir / "tmp").mkdir()
        load_before = os.getloadavg()
        for round_no in range(options.repeat):
            order = ["dvcflow sweep", "dvc exp queue"]
            if round_no % 2:
                order.reverse()
            results: dict[str, dict[str, object]] = {}
            for name in order:
                repo = make_pipeline_repo(workdir / f"round{round_no}-{name.split()[0]}", env)
                del CPU_SECONDS[:]
                with CpuUnder(workdir) as polled:
                    seconds, accuracy = (_sweep if name == "dvcflow sweep" else _dvc_queue)(repo, env)
                samples[name].append(seconds)
                cpu[name].append(sum(CPU_SECONDS))
                cpu_all[name].append(polled.seconds)
                results[name] = accuracy
                print(
                    f"  round {round_no + 1}: {name:<14} {seconds:6.2f}s (CPU {cpu[name][-1]:6.2f}s, "
                    f"polled {cpu_all[name][-1]:6.2f}s, load {os.getloadavg()[0]:.1f})  {accuracy}",
                    flush=True,
                )
            if results["dvcflow sweep"] != results["dvc exp queue"]:
                raise SystemExit(f"the metrics differ: {results}")
        load_after = os.getloadavg()

    medians = {name: statistics.median(values) for name, values in samples.items()}
    ratio = medians["dvcflow sweep"] / medians["dvc exp queue"]
    met = ratio <= TARGET
    print(f"Four demo trials, --jobs {JOBS}, {options.repeat} rounds (load {load_before[0]:.2f}):")
    for name, values in samples.items():
        print(
            f"  {name:<14} median {medians[name]:6.2f}s  min {min(values):6.2f}s  max {max(values):6.2f}s"
            f"  CPU median {statistics.median(cpu[name]):6.2f}s (polled, with detached workers: "
            f"{statistics.median(cpu_all[name]):6.2f}s)"
        )
    print(f"sweep / queue = {ratio:.2f} → target (≤ {TARGET}) {'met' if met else 'NOT met'}")

    write_result(
        RESULTS,
        "sweep",
        f"dvcflow sweep vs dvc exp run --queue + --run-all -j {JOBS}, train.C={VALUES}",
        repeat=options.repeat,
        load_before=load_before,
        load_after=load_after,
        samples_s=samples,
        cpu_s=cpu,
        cpu_polled_s=cpu_all,
        median_s=medians,
        sweep_over_queue=ratio,
        target_met=met,
    )


if __name__ == "__main__":
    main()
