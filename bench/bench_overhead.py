"""dvcflow's fixed costs, timed in one session: a no-op run, a server start, `--help`.

1. No-op `dvcflow run-a` ÷ no-op `dvc repro`, server up, on a copy of the demo pipeline, in three
   environments paired against `dvc repro` in every round: the default (served by the warm starter,
   target ≤ 1.3); a user's own Prefect settings, `PREFECT_HOME` and `PREFECT_LOGGING_LEVEL=WARNING`
   (served too, the child rebuilding Prefect's settings; ≤ 1.3); the warm starter off
   (`DVCFLOW_WARM=0`, ≤ 2.5). Every served round is checked in warm.log to have been served.
2. `dvcflow server start` on an existing database (target ≤ 4 s), the first ever (≤ 8 s), and on a
   further fresh database, which starts from the template the first one left.
3. `dvcflow --help` ÷ `dvc --help` (target ≤ 1.0).
4. Where a no-op run-a's time goes (bench/profile_run_a.py), slice by slice: in its own process, and
   served (with the default settings and with the user's).

Everything goes through the public command lines (`dvcflow` and `dvc` from this venv) with their own
DVCFLOW_HOME in a temporary folder and free ports. Rounds are interleaved, their order rotated, so
that a busy machine slows every command alike.

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

from bench.profile_run_a import profile, profile_served  # noqa: E402
from bench.timing import paired_ratios, rotated, spread  # noqa: E402
from bench.timing import run_command as _run  # noqa: E402 - one timed-command helper for every benchmark
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
        for name in rotated(list(commands), round_no):
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
USER_SETTINGS = "dvcflow run-a, user's PREFECT_HOME and PREFECT_LOGGING_LEVEL"
HELP_WARM = "dvcflow --help, server up (warm starter)"
HELP_DVC = "dvc --help, server up"
SERVED = ("dvcflow run-a", USER_SETTINGS)  # must be served by the warm starter in every round
PROFILE_COLD = "in its own process (DVCFLOW_WARM=0)"
PROFILE_SERVED = "served"
PROFILE_SERVED_USER = "served, user's Prefect settings"


def _served_cpu(home: Path, seen: int) -> float:
    """CPU seconds of the children the warm starter forked since `seen` lines of its log (the command's,
    and its DVC child's): the client's own CPU does not include them (not its children)."""
    lines = (home / zygote.LOG_NAME).read_text().splitlines()
    return sum(float(line.split(", ")[-2].split()[0]) for line in lines[seen:] if " ended: exit " in line)


def _was_served(home: Path, seen: int) -> bool:
    lines = (home / zygote.LOG_NAME).read_text().splitlines()[seen:]
    return any("serving ['run-a']" in line for line in lines) and not any("refused" in line for line in lines)


def _no_op(output: str) -> bool:
    """A no-op run: nothing ran (the summary says so at any log level)."""
    return ("Stages: up to date" in output or UP_TO_DATE in output) and "Running stage" not in output


def user_settings(workdir: Path) -> dict[str, str]:
    """A Prefect user's own settings, exported in their shell: a Prefect home and a logging level."""
    return {"PREFECT_HOME": str(workdir / "user-prefect-home"), "PREFECT_LOGGING_LEVEL": "WARNING"}


def run_a_rounds(
    repeat: int, workdir: Path, profile_rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, dict[str, float]]]:
    """Wall and CPU seconds (user+sys of the whole process tree, a served child included), round by
    round in every list; the profiles of a no-op run-a."""
    home = workdir / "run-home"
    env = _env(home)
    repo = make_pipeline_repo(workdir / "repo", env)
    dvcflow = [sys.executable, "-m", "dvcflow"]
    cold = {**env, ENV_WARM: "0"}
    mine = {**env, **user_settings(workdir)}
    commands = {
        "dvc repro": ([str(BIN / "dvc"), "repro"], env),
        "dvcflow run-a": ([str(BIN / "dvcflow"), "run-a"], env),
        USER_SETTINGS: ([str(BIN / "dvcflow"), "run-a"], mine),
        WARM_OFF: ([str(BIN / "dvcflow"), "run-a"], cold),
        HELP_WARM: ([str(BIN / "dvcflow"), "--help"], env),
        HELP_DVC: ([str(BIN / "dvc"), "--help"], env),  # its baseline, in the same rounds
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    try:
        _run([*dvcflow, "server", "start"], PROJECT, env)
        assert zygote.ping(home) is not None, "no warm starter"
        for args, command_env in commands.values():  # warm-up: dvc.lock up to date, the flow registered
            _run(args, repo, command_env)
        for round_no in range(repeat):
            for name in rotated(list(commands), round_no):
                args, command_env = commands[name]
                seen = len((home / zygote.LOG_NAME).read_text().splitlines())
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                seconds, result = _run(args, repo, command_env)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                own = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                cpu[name].append(own + (_served_cpu(home, seen) if command_env is not cold else 0.0))
                if name not in (HELP_WARM, HELP_DVC):
                    output = result.stdout + result.stderr
                    assert _no_op(output), output
                if name in SERVED and not _was_served(home, seen):
                    log = (home / zygote.LOG_NAME).read_text().splitlines()[seen:]
                    raise SystemExit(f"`{name}` was not served by the warm starter: {log}")
                samples[name].append(seconds)
        profiles = {
            PROFILE_COLD: profile(repo, profile_rounds, cold),
            PROFILE_SERVED: profile_served(repo, profile_rounds, env, home),
            PROFILE_SERVED_USER: profile_served(repo, profile_rounds, env, home, user_settings(workdir)),
        }
    finally:
        subprocess.run([*dvcflow, "server", "stop"], cwd=PROJECT, env=env, capture_output=True, timeout=120)
    return samples, cpu, profiles


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds per command (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args()
    repeat = max(1, options.repeat)

    profile_rounds = max(3, (repeat + 1) // 2)
    workdir = Path(tempfile.mkdtemp(prefix="dvcflow-bench-overhead-"))
    load_before = os.getloadavg()
    try:
        samples = help_rounds(repeat, workdir)
        server_samples, server_cpu = server_rounds(repeat, repeat, workdir)
        samples.update(server_samples)
        run_samples, cpu, profiles = run_a_rounds(repeat, workdir, profile_rounds)
        samples.update(run_samples)
    finally:
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    medians = {name: _median(values) for name, values in samples.items()}
    repro = samples["dvc repro"]
    ratios = {  # round by round, against the `dvc repro` of the same round
        name: paired_ratios(samples[name], repro) for name in ("dvcflow run-a", USER_SETTINGS, WARM_OFF)
    }
    rows = {
        "no-op run-a, served / no-op dvc repro (target <= 1.3)": spread(ratios["dvcflow run-a"]),
        "no-op run-a, served, user's Prefect settings / no-op dvc repro (target <= 1.3)": spread(
            ratios[USER_SETTINGS]
        ),
        "no-op run-a, warm starter off / no-op dvc repro (target <= 2.5)": spread(ratios[WARM_OFF]),
        "server start, existing database, s (target <= 4)": spread(samples[EXISTING]),
        "server start, first ever after make setup, s (target <= 8)": spread(samples[FIRST_EVER]),
        "server start, first ever with no template at all, s (target <= 8)": spread(samples[NO_TEMPLATE]),
        "dvcflow --help / dvc --help (target <= 1.0)": spread(
            paired_ratios(samples["dvcflow --help"], samples["dvc --help"])
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
        "order": "rotated: each command first in turn",
        "profile_rounds": profile_rounds,
        "samples_s": {name: [round(v, 3) for v in values] for name, values in samples.items()},
        "medians_s": medians,
        "server_cpu_s": {name: _median(values) for name, values in server_cpu.items()},
        "cpu_medians_s": {name: _median(values) for name, values in cpu.items()},
        "paired_ratios": ratios,
        "rows": rows,
        "run_a_profiles_s": {
            name: {label: round(value, 3) for label, value in slices.items()}
            for name, slices in profiles.items()
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"overhead-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    width = max(map(len, medians))
    for name, value in medians.items():
        print(f"{name:<{width}}  {value:7.2f} s  (samples {', '.join(f'{v:.2f}' for v in samples[name])})")
    for name, values in cpu.items():
        print(f"{name:<{width}}  {_median(values):7.2f} s CPU (user+sys, process tree)")
    for name, row in rows.items():
        print(f"{name}: median {row['median']:.2f} ({row['min']:.2f}-{row['max']:.2f}, {row['n']} rounds)")
    print(f"wrote {out.relative_to(PROJECT)}")


if __name__ == "__main__":
    main()
