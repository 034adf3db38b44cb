"""Where a no-op `dvcflow run-a` spends its wall-clock time, as a partition into slices: run in its own
process (`profile`: the warm starter off) and served by the warm starter (`profile_served`).

A thread samples the main thread's stack every few milliseconds while `dvcflow run-a` runs; each sample
goes to the first slice whose test matches the stack (imports first, so a lazy import inside the flow
counts as an import). What happens before and after the sampled stretch is measured from outside: the
interpreter's start-up and exit for a process of its own; for a served command, the client's start-up,
its hand-over to the starter and the fork, and the client's exit after its child's. cProfile inflates
import-heavy code several times, which is why this samples.

    .venv/bin/python bench/profile_run_a.py REPO [--rounds 3] [--served]   # a table (JSON with --json)

Run it against a no-op repository (DVC already up to date) and a running dvcflow server (the
DVCFLOW_* variables of the environment choose it). `--served` replaces that server's warm starter by one
of this script's for the rounds (the same code and environment; its children sample themselves when
asked to through `SAMPLES_ENV`), then starts the real one again.
"""

from __future__ import annotations

import argparse
import atexit
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
SAMPLES_ENV = "DVCFLOW_BENCH_SAMPLES"  # a served child given a file name samples itself and writes there
TOTAL = "total (wall clock)"
HAND_OVER = "client start-up, hand-over to the starter, fork and adoption"
CLIENT_EXIT = "client's exit after its child's"
STARTUP = "interpreter start-up"
PROCESS_EXIT = "exit (Prefect's exit handlers, interpreter shutdown)"

# (slice, test on the stack's (file, function) pairs, outermost first); the first match wins.
SLICES: tuple[tuple[str, str, str], ...] = (
    ("exit (threads, Prefect's exit handlers)", "dvcflow/proc/zygote.py", "_finish"),
    ("imports (Prefect and what it loads lazily)", "<frozen importlib._bootstrap>", "_find_and_load"),
    ("Prefect settings rebuilt for the caller", "dvcflow/api/prefect_settings.py", ""),
    ("dvc repro process (waiting for it: repro, metrics read)", "dvcflow/dvc/commands.py", ""),
    ("DVC in process (pre-flight: repository, params, targets)", "dvcflow/dvc/", ""),
    ("metrics summary task (log, artifact)", "dvcflow/flows/repro.py", "metrics_summary_task"),
    ("read-back of the flow and task runs", "dvcflow/api/execution.py", "_final_task_runs"),
    ("read-back of the flow and task runs", "dvcflow/api/execution.py", "_returned"),
    ("orphaned-run check", "dvcflow/api/crash.py", "crash_orphaned_runs"),
    ("watchdog start", "dvcflow/api/watchdog.py", ""),
    ("Prefect task engine (task-run states, API)", "prefect/task_engine.py", ""),
    ("Prefect flow engine (flow run, states, API)", "prefect/flow_engine.py", ""),
    ("settings and API connection", "dvcflow/api/execution.py", "_execute"),
    ("API choice, server health", "dvcflow/api/connect.py", ""),
    ("repository checks, server health", "dvcflow/services/launch.py", "_prepare"),
    ("repository checks, server health", "dvcflow/services/launch.py", "connect_run"),
    ("run summary (render)", "dvcflow/cli/render/", ""),
    ("CLI parsing and the rest", "", ""),
)


def _classify(stack: list[tuple[str, str]]) -> str:
    for label, path, function in SLICES:
        for filename, name in stack:
            if path in filename and (not function or name == function):
                return label
    return SLICES[-1][0]


class _Sampler:
    """Samples the main thread's stack every `INTERVAL_S` in a daemon thread, from `start` to `stop`."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._done = threading.Event()
        self._main = threading.main_thread().ident or 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        self.began = time.time()
        self._started = time.perf_counter()
        self._thread.start()

    def stop(self) -> dict[str, float]:
        """Seconds per slice: the sampled stretch's wall time shared out as the samples are."""
        seconds = time.perf_counter() - self._started
        self._done.set()
        self._thread.join()
        total = sum(self.counts.values()) or 1
        return {label: seconds * n / total for label, n in self.counts.items()}

    def _sample(self) -> None:
        while not self._done.wait(INTERVAL_S):
            frame: FrameType | None = sys._current_frames().get(self._main)
            stack: list[tuple[str, str]] = []
            while frame is not None:
                stack.append((frame.f_code.co_filename, frame.f_code.co_name))
                frame = frame.f_back
            self.counts[_classify(stack[::-1])] += 1


def _child(argv: list[str]) -> None:
    """Run `dvcflow ARGV` here while sampling; print one JSON line with the slices and timestamps."""
    sampler = _Sampler()
    sampler.start()
    sys.argv = ["dvcflow", *argv]
    code = 0
    try:
        from dvcflow.cli.app import main

        main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    slices = sampler.stop()
    report = {"began": sampler.began, "ended": time.time(), "code": code, "slices": slices}
    print(json.dumps(report), file=sys.__stdout__)
    sys.__stdout__.flush()


def _medians(per_round: list[dict[str, float]]) -> dict[str, float]:
    labels = {label for slices in per_round for label in slices}
    medians = {label: statistics.median(s.get(label, 0.0) for s in per_round) for label in labels}
    return dict(sorted(medians.items(), key=lambda item: -item[1]))


def profile(repo: Path, rounds: int, env: dict[str, str] | None = None) -> dict[str, float]:
    """Median seconds per slice over `rounds` no-op runs of `dvcflow run-a` in `repo`, each in a
    process of its own (the warm starter is not asked)."""
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
        slices[STARTUP] = data["began"] - launched
        slices[PROCESS_EXIT] = finished - data["ended"]
        slices[TOTAL] = finished - launched
        per_round.append(slices)
    return _medians(per_round)


# ---------------------------------------------------------------------------- served by the warm starter


def _sample_this_child(out: Path) -> None:
    """In a served child, before the command: sample until the very end of its exit (this exit handler
    is registered first, so it runs last), then write the slices to `out`."""
    sampler = _Sampler()
    preloaded = set(sys.modules)

    def write() -> None:
        slices = sampler.stop()
        imported = sorted(set(sys.modules) - preloaded)  # what the starter could have imported too
        report = {"began": sampler.began, "ended": time.time(), "slices": slices, "imported": imported}
        out.write_text(json.dumps(report))

    atexit.register(write)
    sampler.start()


def _starter(home: Path, server_pid: int) -> None:
    """`profile_run_a.py --starter HOME SERVER_PID`: dvcflow's warm starter (`dvcflow.cli.warm.main`),
    whose children sample themselves when their environment names a file in `SAMPLES_ENV`."""
    from dvcflow.cli import warm
    from dvcflow.proc import zygote

    policy = warm._Policy(os.environ, os.getcwd())

    def run(argv: list[str], main_package: str | None) -> int:
        out = os.environ.get(SAMPLES_ENV)
        if out:
            _sample_this_child(Path(out))
        return warm._run(argv, main_package)

    sys.argv[1:] = [str(home), str(server_pid)]  # if the code changes, it becomes dvcflow's own starter
    hooks = zygote.StarterHooks(
        module=warm.MODULE,
        package=warm.PACKAGE,
        preload=warm._preload,
        run=run,
        refuse=policy.refuse,
        after_adopt=policy.after_adopt,
        entries={warm.DVC_CHILD: warm._run_dvc_child},
    )
    zygote.serve_forever(home, server_pid, hooks)


def _swap_starter(home: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Stop the server's warm starter and start this script's in its place, with its environment and
    working directory; returns it and the server's pid."""
    from dvcflow.cli import warm
    from dvcflow.proc import zygote

    real = zygote.ping(home, timeout=60)
    if real is None:
        raise SystemExit(f"no warm starter serves {home}")
    environ = dict(
        entry.split("=", 1) for entry in Path(f"/proc/{real}/environ").read_text().split("\0") if "=" in entry
    )
    server_pid = int(Path(f"/proc/{real}/cmdline").read_text().split("\0")[-2])
    zygote.stop(home, warm.MODULE)
    with (home / zygote.LOG_NAME).open("ab") as log:
        ours = subprocess.Popen(
            [sys.executable, __file__, "--starter", str(home), str(server_pid)],
            cwd=home,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if zygote.ping(home, timeout=120) != ours.pid:
        ours.kill()
        raise SystemExit("the sampling warm starter did not start")
    return ours, server_pid


def profile_served(
    repo: Path, rounds: int, env: dict[str, str], home: Path, extra_env: dict[str, str] | None = None
) -> dict[str, float]:
    """Median seconds per slice over `rounds` no-op runs of `dvcflow run-a` in `repo` served by the warm
    starter of `home` (with `extra_env` added to the caller's environment: e.g. a user's PREFECT_HOME)."""
    from dvcflow.cli import warm
    from dvcflow.proc import zygote

    ours, server_pid = _swap_starter(home)
    per_round: list[dict[str, float]] = []
    try:
        for number in range(rounds):
            out = home / f"bench-samples-{number}.json"
            out.unlink(missing_ok=True)
            caller = {**env, **(extra_env or {}), SAMPLES_ENV: str(out)}
            dvcflow = str(Path(sys.executable).parent / "dvcflow")
            launched = time.time()
            result = subprocess.run(
                [dvcflow, "run-a"], cwd=repo, env=caller, capture_output=True, text=True, timeout=600
            )
            finished = time.time()
            if result.returncode != 0 or not out.exists():
                log = (home / zygote.LOG_NAME).read_text().splitlines()[-5:]
                raise SystemExit(f"served run-a failed or was not served:\n{result.stderr}\n{log}")
            data = json.loads(out.read_text())
            out.unlink()
            slices = dict(data["slices"])
            slices[HAND_OVER] = data["began"] - launched
            slices[CLIENT_EXIT] = finished - data["ended"]
            slices[TOTAL] = finished - launched
            per_round.append(slices)
    finally:
        ours.terminate()
        ours.wait(timeout=60)
        zygote.launch(home, warm.MODULE, [str(home), str(server_pid)], _environ_of_starter(env, home))
    return _medians(per_round)


def _environ_of_starter(env: dict[str, str], home: Path) -> dict[str, str]:
    """What `dvcflow server start` gives its warm starter (`dvcflow.server.control._launch_starter`)."""
    from dvcflow.core.settings import local_client_environment, resolve_server_config

    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        config = resolve_server_config()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    starter = {key: value for key, value in env.items() if not key.startswith("PREFECT_")}
    starter.update(local_client_environment(config))
    return starter


def table(medians: dict[str, float]) -> str:
    total = medians[TOTAL]
    lines = ["| slice | seconds | share |", "| --- | ---: | ---: |"]
    for label, seconds in sorted(medians.items(), key=lambda item: -item[1]):
        if label != TOTAL and seconds >= 0.005:
            lines.append(f"| {label} | {seconds:.2f} | {100 * seconds / total:.0f} % |")
    lines.append(f"| **{TOTAL}** | **{total:.2f}** | 100 % |")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2:])
        return
    if sys.argv[1:2] == ["--starter"]:
        _starter(Path(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("repo", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--served", action="store_true", help="served by the warm starter")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    env = dict(os.environ)
    if options.served:
        from dvcflow.core.settings import resolve_server_config

        medians = profile_served(options.repo, options.rounds, env, resolve_server_config().home)
    else:
        medians = profile(options.repo, options.rounds, env)
    print(json.dumps(medians, indent=2) if options.json else table(medians))


if __name__ == "__main__":
    main()
