"""What crash detection costs a run, and how fast a killed run becomes Crashed.

1. In process, `--repeat` times: the wall time `dvcflow.api.watchdog.watching()` adds around an empty block
   (start the watchdog, tell it `done` at the end: the whole cost at flow end is one pipe write), and the
   CPU the watchdog process itself uses (it runs beside the flow on the same machine).
2. Against a dvcflow server of its own: `dvcflow run-a` on a one-stage repo is SIGKILLed while the stage
   runs; seconds until the API shows its flow run Crashed (no other run started).

    .venv/bin/python bench/bench_watchdog.py [--repeat 20] [--kills 3]

For comparison: Prefect's heartbeats cost 0-1 s at every flow end (the thread is joined; field notes),
and their zombie detection needs a server-side automation and at least one 30 s heartbeat period.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from tests.helpers import api_post, base_env, free_port, make_tiny_repo  # noqa: E402

from dvcflow.api.watchdog import watching  # noqa: E402

RESULTS = PROJECT / "bench" / "results"
SLOW = """stages:
  slow:
    cmd: python -c "import pathlib, time; pathlib.Path('started').touch(); time.sleep(30)"
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def spawn_cost(repeat: int) -> tuple[list[float], list[float]]:
    """Wall seconds added in this process, CPU seconds used by each watchdog."""
    walls, cpus = [], []
    for _ in range(repeat):
        before = _children_cpu()
        began = time.perf_counter()
        # A dead address: on `done` the watchdog makes no request at all.
        with watching("http://127.0.0.1:9/api", ["bench"]):
            pass
        walls.append(time.perf_counter() - began)
        os.waitpid(-1, 0)  # reap it to read its CPU time (dvcflow itself never waits)
        cpus.append(_children_cpu() - before)
    return walls, cpus


def _server(action: str, env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "dvcflow", "server", action]
    subprocess.run(command, env=env, cwd=PROJECT, check=True, capture_output=True, timeout=300)


def crash_latency(kills: int) -> list[float]:
    workdir = Path(tempfile.mkdtemp(prefix="dvcflow-bench-watchdog-"))
    home = workdir / "home"
    env = base_env(home)
    port = free_port()
    env.update(DVCFLOW_HOME=str(home), DVCFLOW_PORT=str(port))
    api_url = f"http://127.0.0.1:{port}/api"
    python = sys.executable
    latencies = []
    try:
        _server("start", env)
        for number in range(kills):
            repo = make_tiny_repo(workdir / f"repo{number}", env, SLOW)
            run = subprocess.Popen(
                [python, "-m", "dvcflow", "run-a"],
                cwd=repo,
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 120
            while not (repo / "started").exists():
                if time.monotonic() > deadline:
                    raise SystemExit("the stage never started")
                time.sleep(0.02)
            # Counted before the kill: read after it, a watchdog that had already acted (it takes
            # ~0.3 s) would be counted in, and the wait below would last until its timeout.
            query = {"flow_runs": {"state": {"type": {"any_": ["CRASHED"]}}}}
            before = len(api_post(api_url, "/flow_runs/filter", query))  # type: ignore[arg-type]
            os.kill(run.pid, signal.SIGKILL)
            killed = time.monotonic()
            run.wait()
            while len(api_post(api_url, "/flow_runs/filter", query)) == before:  # type: ignore[arg-type]
                if time.monotonic() - killed > 60:
                    raise SystemExit("the killed run was not Crashed within 60 s")
                time.sleep(0.02)
            latencies.append(time.monotonic() - killed)
            with contextlib.suppress(ProcessLookupError):  # served: the starter has killed it already
                os.killpg(run.pid, signal.SIGKILL)  # the orphaned stage command
    finally:
        _server("stop", env)
        shutil.rmtree(workdir, ignore_errors=True)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=20, help="watchdog starts timed (default 20)")
    parser.add_argument("--kills", type=int, default=3, help="killed runs timed (default 3; 0 skips)")
    options = parser.parse_args()
    load = os.getloadavg()[0]
    walls, cpus = spawn_cost(options.repeat)
    print(f"Watchdog, {options.repeat} starts (load {load:.2f}):")
    print(
        f"  added to the run: median {statistics.median(walls) * 1000:.1f} ms, max {max(walls) * 1000:.1f} ms"
    )
    print(f"  watchdog CPU:     median {statistics.median(cpus) * 1000:.1f} ms")
    latencies = crash_latency(options.kills) if options.kills else []
    if latencies:
        print(
            f"SIGKILL -> Crashed, {len(latencies)} runs: median {statistics.median(latencies):.2f} s, "
            f"max {max(latencies):.2f} s"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"watchdog-{stamp}.json").write_text(
        json.dumps(
            {
                "benchmark": "crash detection: watchdog cost and SIGKILL-to-Crashed latency",
                "when": stamp,
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_before": load},
                "added_wall_s": walls,
                "watchdog_cpu_s": cpus,
                "sigkill_to_crashed_s": latencies,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
