"""dvcflow's fixed costs, timed in one session: a no-op run, a server start, `--help`.

1. No-op `dvcflow run-a` ÷ no-op `dvc repro`, server up, on a copy of the demo pipeline (target ≤ 2.5):
   served by the warm starter (`dvcflow.cli.warm`), and with it off (`DVCFLOW_WARM=0`); CPU seconds too.
2. `dvcflow server start` on an existing database (target ≤ 4 s), the first ever (target ≤ 8 s), and on a
   further fresh database, which starts from the template the first one left.
3. `dvcflow --help` ÷ `dvc --help` (target ≤ 1.0).
4. Where a no-op run-a's time goes (bench/profile_run_a.py): the biggest slices.

Everything goes through the public command lines (`dvcflow` and `dvc` from this venv) with their own
DVCFLOW_HOME in a temporary folder and free ports. Rounds are interleaved so that a busy machine slows
every command alike.

    .venv/bin/python bench/bench_overhead.py [--repeat 5] [--keep]

Prints medians and ratios; writes the samples to bench/results/overhead-*.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from bench.bench_per_stage import _run  # noqa: E402 - one timed-command helper for every benchmark
from bench.profile_run_a import profile  # noqa: E402
from tests.helpers import base_env, free_port, make_pipeline_repo  # noqa: E402

from dvcflow.core.settings import ENV_WARM  # noqa: E402
from dvcflow.proc import zygote  # noqa: E402

RESULTS = PROJECT / "bench" / "results"
BIN = Path(sys.executable).parent
UP_TO_DATE = "Data and pipelines are up to date."
FIRST_EVER = "server start, first ever after make setup (template copy)"
NO_TEMPLATE = "server start, first ever, no template at all (migrations)"
PREPARE = "make setup: prepare the template database (once per Prefect version)"
EXISTING = "server start, existing database"


def _env(home: Path) -> dict[str, str]:
    env = base_env(home)
    env.update(DVCFLOW_HOME=str(home), DVCFLOW_PORT=str(free_port()), COLUMNS="120")
    return env


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def help_rounds(repeat: int, workdir: Path) -> dict[str, list[float]]:
    env = _env(workdir / "help-home")
    commands = {
        "dvc --help": [str(BIN / "dvc"), "--help"],
        "dvcflow --help": [str(BIN / "dvcflow"), "--help"],
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for round_no in range(repeat * 2):  # cheap: twice the rounds
        for name in list(commands)[round_no % 2 :] + list(commands)[: round_no % 2]:
            samples[name].append(_run(commands[name], workdir, env)[0])
    return samples


def _server_cpu(home: Path) -> float:
    """CPU seconds (user + sys) the server process has used so far: its start-up, as `start` just returned."""
    pid = int((home / "server.pid").read_text())
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_rounds(
    repeat: int, fresh_repeat: int, workdir: Path
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each fresh round, interleaved: a first start ever with an empty cache (no template database: the
    migrations run); `make setup`'s template preparation into another empty cache; a first start ever
    after it (a template copy; see `dvcflow.server.process`). Then restarts on an existing database.
    Returns wall-clock samples and the server process's CPU seconds when `start` returned."""
    dvcflow = [sys.executable, "-m", "dvcflow", "server"]
    prepare = [sys.executable, "-m", "dvcflow.server.process", "--prepare-template"]
    samples: dict[str, list[float]] = {name: [] for name in (NO_TEMPLATE, PREPARE, FIRST_EVER, EXISTING)}
    cpu: dict[str, list[float]] = {name: [] for name in (NO_TEMPLATE, FIRST_EVER, EXISTING)}

    def start(label: str, env: dict[str, str]) -> None:
        seconds, result = _run([*dvcflow, "start"], workdir, env)
        assert "Started Prefect server" in result.stdout, result.stdout
        samples[label].append(seconds)
        cpu[label].append(_server_cpu(Path(env["DVCFLOW_HOME"])))
        _run([*dvcflow, "stop"], workdir, env)

    for round_no in range(fresh_repeat):
        env = _env(workdir / f"bare-home-{round_no}")
        env["XDG_CACHE_HOME"] = str(workdir / f"bare-cache-{round_no}")
        start(NO_TEMPLATE, env)
        env = _env(workdir / f"setup-home-{round_no}")
        env["XDG_CACHE_HOME"] = str(workdir / f"setup-cache-{round_no}")
        seconds, result = _run(prepare, workdir, env)
        assert result.stdout.strip().endswith("prepared"), result.stdout
        samples[PREPARE].append(seconds)
        start(FIRST_EVER, env)
    env = _env(workdir / "bare-home-0")  # an existing database from here on
    env["XDG_CACHE_HOME"] = str(workdir / "bare-cache-0")
    for _ in range(repeat):
        start(EXISTING, env)
    return samples, cpu


WARM_OFF = "dvcflow run-a, warm starter off"
HELP_WARM = "dvcflow --help, server up (warm starter)"


def _served_cpu(home: Path, seen: int) -> float:
    """CPU seconds of the warm starter's newest child (its log line `PID ended: exit N, X s CPU`) when
    it forked one since `seen` lines; the client's own CPU does not include it (not its child)."""
    lines = (home / zygote.LOG_NAME).read_text().splitlines()
    ended = [line for line in lines[seen:] if " ended: exit " in line]
    return float(ended[-1].split(", ")[-1].split()[0]) if ended else 0.0


def run_a_rounds(
    repeat: int, workdir: Path, profile_rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, float]]:
    """Wall and CPU seconds (user+sys of the whole process tree, a served child included)."""
    home = workdir / "run-home"
    env = _env(home)
    repo = make_pipeline_repo(workdir / "repo", env)
    dvcflow = [sys.executable, "-m", "dvcflow"]
    cold = {**env, ENV_WARM: "0"}
    commands = {
        "dvc repro": ([str(BIN / "dvc"), "repro"], env),
        "dvcflow run-a": ([str(BIN / "dvcflow"), "run-a"], env),
        WARM_OFF: ([str(BIN / "dvcflow"), "run-a"], cold),
        HELP_WARM: ([str(BIN / "dvcflow"), "--help"], env),
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    try:
        _run([*dvcflow, "server", "start"], PROJECT, env)
        assert zygote.ping(home) is not None, "no warm starter"
        for args, command_env in commands.values():  # warm-up: dvc.lock up to date, the flow registered
            _run(args, repo, command_env)
        for round_no in range(repeat):
            for name in list(commands)[round_no % 4 :] + list(commands)[: round_no % 4]:
                args, command_env = commands[name]
                seen = len((home / zygote.LOG_NAME).read_text().splitlines())
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                seconds, result = _run(args, repo, command_env)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                own = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                cpu[name].append(own + (_served_cpu(home, seen) if command_env is env else 0.0))
                if name != HELP_WARM:
                    output = result.stdout + result.stderr
                    assert UP_TO_DATE in output and "Running stage" not in output, output
                samples[name].append(seconds)
        slices = profile(repo, profile_rounds, env)
    finally:
        subprocess.run([*dvcflow, "server", "stop"], cwd=PROJECT, env=env, capture_output=True, timeout=120)
    return samples, cpu, slices


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds per command (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args()
    repeat = max(1, options.repeat)

    workdir = Path(tempfile.mkdtemp(prefix="dvcflow-bench-overhead-"))
    load_before = os.getloadavg()
    try:
        samples = help_rounds(repeat, workdir)
        server_samples, server_cpu = server_rounds(repeat, max(1, repeat // 2), workdir)
        samples.update(server_samples)
        run_samples, cpu, slices = run_a_rounds(repeat, workdir, max(1, (repeat + 1) // 2))
        samples.update(run_samples)
    finally:
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    medians = {name: _median(values) for name, values in samples.items()}
    rows = {
        "no-op run-a / no-op dvc repro (target <= 2.5)": round(
            medians["dvcflow run-a"] / medians["dvc repro"], 3
        ),
        "server start, existing database, s (target <= 4)": medians[EXISTING],
        "server start, first ever after make setup, s (target <= 8)": medians[FIRST_EVER],
        "server start, first ever with no template at all, s (target <= 8)": medians[NO_TEMPLATE],
        "no-op run-a, warm starter off / no-op dvc repro": round(medians[WARM_OFF] / medians["dvc repro"], 3),
        "dvcflow --help / dvc --help (target <= 1.0)": round(
            medians["dvcflow --help"] / medians["dvc --help"], 3
        ),
    }
    report = {
        "benchmark": "overhead",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "versions": {name: metadata.version(name) for name in ("dvc", "prefect", "dvcflow")},
        "repeat": repeat,
        "samples_s": {name: [round(v, 3) for v in values] for name, values in samples.items()},
        "medians_s": medians,
        "server_cpu_s": {name: _median(values) for name, values in server_cpu.items()},
        "cpu_medians_s": {name: _median(values) for name, values in cpu.items()},
        "rows": rows,
        "run_a_profile_s": {label: round(value, 3) for label, value in slices.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"overhead-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    width = max(map(len, medians))
    for name, value in medians.items():
        print(f"{name:<{width}}  {value:7.2f} s  (samples {', '.join(f'{v:.2f}' for v in samples[name])})")
    for name, values in cpu.items():
        print(f"{name:<{width}}  {_median(values):7.2f} s CPU (user+sys, process tree)")
    for name, value in rows.items():
        print(f"{name}: {value:.2f}")
    print(f"wrote {out.relative_to(PROJECT)}")


if __name__ == "__main__":
    main()
