"""Stages on Dask workers without a shared disk (each in a clone, data through the DVC remote) against the
same workers sharing the disk, in one session (docs/remote.md).

The wide pipeline, 4 branches sleeping S seconds plus a join (`--sleep`, default 2), everything reproduced
(`--force`, so that no round is served by DVC's run cache of an earlier one), on a two-worker `LocalCluster`
whose workers work in scratch folders of their own:

- `run-a --per-stage --dask-address A --no-shared-disk --force` ÷ the same with `--shared-disk`: the ratio,
  round by round;
- the transfer cost per stage, from each clone task's own account (`On HOST: checkout, pull, run, push`):
  checkout + pull + push seconds, and the caller's `dvc push` before and `dvc pull` after.

No target: it is measured. Rounds are interleaved, their order rotated; each round starts from a fresh copy.

    .venv/bin/python bench/bench_dask_clones.py [--repeat 5] [--sleep 2]

Prints medians and ratios; writes the samples to bench/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from bench.timing import bench_server, paired_ratios, rotated, spread, write_result  # noqa: E402
from bench.timing import run_command as _run  # noqa: E402
from tests.helpers import (  # noqa: E402
    DASK_SCRATCH_CLUSTER,
    free_port,
    make_clone_wide_repo,
    with_clone_remotes,
)

RESULTS = PROJECT / "bench" / "results"
BRANCHES = 4
ACCOUNT = re.compile(r"^On (?P<host>\S+): (?P<steps>.+)$")
STEP = re.compile(r"(?P<step>\w+) (?P<seconds>[\d.]+) s")


def _median(samples: list[float]) -> float:
    return round(statistics.median(samples), 3) if samples else 0.0


def _accounts(api_url: str, flow_run_id: str) -> list[dict[str, float]]:
    """Each clone task's `checkout/pull/run/push` seconds, from the flow run's log."""
    body = json.dumps({"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}).encode()
    request = urllib.request.Request(
        f"{api_url}/logs/filter", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        logs = json.loads(response.read())
    found = []
    for log in logs:
        match = ACCOUNT.match(str(log["message"]))
        if match:
            found.append({m["step"]: float(m["seconds"]) for m in STEP.finditer(match["steps"])})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds per command (default 5)")
    parser.add_argument("--sleep", type=float, default=2.0, help="seconds each branch sleeps (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args()

    load_before = os.getloadavg()
    with bench_server("dask-clones", keep=options.keep) as (workdir, env):
        port = free_port()
        address = f"tcp://127.0.0.1:{port}"
        scratch = workdir / "scratch"
        scratch.mkdir()
        cluster = subprocess.Popen(
            [sys.executable, "-c", DASK_SCRATCH_CLUSTER, str(port), str(scratch), str(workdir / "cwd.log")],
            cwd=scratch,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            assert cluster.stdout is not None and cluster.stdout.readline().strip() == "ready"
            base = [sys.executable, "-m", "dvcflow", "run-a", "--per-stage", "--dask-address", address]
            commands = {
                "shared disk": [*base, "--shared-disk", "--force", "--json", "--no-show-metrics"],
                "clones": [*base, "--no-shared-disk", "--force", "--json", "--no-show-metrics"],
            }
            template = make_clone_wide_repo(workdir / "template", env, branches=BRANCHES, sleep=options.sleep)
            with_clone_remotes(template, workdir, env)
            api_url = f"http://127.0.0.1:{env['DVCFLOW_PORT']}/api"
            for label, args in commands.items():  # warm-up: flows registered, clones made on both workers
                warm = workdir / f"warm-up-{label.split()[0]}"
                shutil.copytree(template, warm, symlinks=True)
                _run(args, warm, env)
            samples: dict[str, list[float]] = {label: [] for label in commands}
            accounts: list[dict[str, float]] = []
            caller: dict[str, list[float]] = {"dvc push before": [], "settle (dvc pull) after": []}
            for round_number in range(options.repeat):
                for label in rotated(list(commands), round_number):
                    repo = workdir / f"round-{round_number}-{label.split()[0]}"
                    shutil.copytree(template, repo, symlinks=True)
                    seconds, result = _run(commands[label], repo, env)
                    samples[label].append(seconds)
                    if label == "clones":
                        report: dict[str, Any] = json.loads(result.stdout)
                        accounts.extend(_accounts(api_url, report["flow_run"]["id"]))
                        pushes = [t["seconds"] for t in report["tasks"] if t["name"] == "dvc push"]
                        caller["dvc push before"].extend(pushes)
        finally:
            cluster.terminate()
            cluster.wait(timeout=60)

    ratios = {"clones / shared disk": paired_ratios(samples["clones"], samples["shared disk"])}
    transfer = [
        account.get("checkout", 0) + account.get("pull", 0) + account.get("push", 0) for account in accounts
    ]
    per_stage = {
        step: _median([account.get(step, 0.0) for account in accounts])
        for step in ("checkout", "pull", "run", "push")
    }
    ratio_rows = {label: spread(values) for label, values in ratios.items()}
    transfer_row = spread(transfer) if transfer else {}
    write_result(
        RESULTS,
        f"dask_clones-{options.sleep:g}s",
        "dask-clones",
        repeat=options.repeat,
        load_before=load_before,
        load_after=os.getloadavg(),
        branches=BRANCHES,
        branch_sleep_s=options.sleep,
        workers=2,
        order="rotated: each command first in turn",
        samples_s={label: [round(v, 3) for v in values] for label, values in samples.items()},
        medians_s={label: _median(values) for label, values in samples.items()},
        paired_ratios=ratios,
        ratios=ratio_rows,
        per_stage_median_s=per_stage,
        per_stage_transfer_s=transfer_row,
        caller_dvc_push_s=spread(caller["dvc push before"]) if caller["dvc push before"] else {},
    )
    for label, values in samples.items():
        print(f"{label:<12} {_median(values):7.2f} s  (samples {', '.join(f'{v:.2f}' for v in values)})")
    for label, row in ratio_rows.items():
        print(f"{label}: median {row['median']:.2f} ({row['min']:.2f}-{row['max']:.2f}, {row['n']} rounds)")
    print(f"per stage in a clone (median s): {per_stage}")
    print(f"transfer per stage (checkout+pull+push): {transfer_row}")


def rows(result: dict[str, Any]) -> list[str]:
    """The rows bench/run.py writes into docs/benchmarks.md."""
    ratio = result["ratios"]["clones / shared disk"]
    transfer = result.get("per_stage_transfer_s") or {}
    steps = result["per_stage_median_s"]
    sleep = result["branch_sleep_s"]
    wide = f"wide {result['branches']} x {sleep:g} s, 2 Dask workers"
    return [
        f"| {wide}: clones (`--no-shared-disk`) ÷ shared disk "
        f"| {result['medians_s']['clones']:.2f} s ÷ {result['medians_s']['shared disk']:.2f} s "
        f"| {ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f}) | {ratio['n']} | none (measured) |",
        f"| per stage in a clone: checkout {steps['checkout']:.2f} s, pull {steps['pull']:.2f} s, "
        f"run {steps['run']:.2f} s, push {steps['push']:.2f} s (medians) "
        f"| transfer {transfer.get('median', 0):.2f} s | — | {transfer.get('n', 0)} stages "
        "| none (measured) |",
    ]


if __name__ == "__main__":
    main()
