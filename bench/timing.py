"""The one way the benchmarks time a command (wall seconds, and the CPU seconds of its process tree) and
the one way they get a dvcflow server to time it against (`bench_server`)."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

PROJECT = Path(__file__).resolve().parents[1]
MIN_ROUNDS_FOR_A_CLAIM = 5  # a row may say "met" or "missed" only from this many interleaved rounds

T = TypeVar("T")


def rotated(items: Sequence[T], round_no: int) -> list[T]:
    """`items` in the order of round `round_no`: each goes first in turn, so that no command always
    runs first (after a pause, or right after another's cache writes) and load drifts hit all alike."""
    shift = round_no % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, minimum, maximum and number of samples."""
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "n": len(values),
    }


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Round by round: a command against its baseline of the same round (the same load)."""
    return [round(a / b, 3) for a, b in zip(numerators, denominators, strict=True)]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_command(
    args: list[str], cwd: Path, env: dict[str, str], *, timeout: float = 600, cpu: list[float] | None = None
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run `args` to the end: its wall seconds and result; the benchmark stops if it fails. With `cpu`,
    append its user+sys seconds (its whole process tree, not daemons it leaves behind)."""
    start, cpu_start = time.perf_counter(), _children_cpu()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if cpu is not None:
        cpu.append(_children_cpu() - cpu_start)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return seconds, result


class CpuUnder:
    """The CPU seconds of every process whose working directory is under `root`, polled every 0.1 s
    while the block runs: unlike RUSAGE_CHILDREN it counts daemons the command leaves detached (DVC's
    queue runs its trials in Celery workers that are not our children). Processes that live under
    0.1 s are missed, on both sides alike."""

    def __init__(self, root: Path) -> None:
        self.root = str(root.resolve())
        self._seen: dict[tuple[int, str], float] = {}  # (pid, start time) → last user+sys seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> CpuUnder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._scan()

    @property
    def seconds(self) -> float:
        return sum(self._seen.values())

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            self._scan()

    def _scan(self) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                cwd = os.readlink(f"/proc/{entry.name}/cwd")
                with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone, or not ours to read
            if cwd == self.root or cwd.startswith(self.root + os.sep):
                # fields[0] is the state (field 3 of stat): utime, stime are fields 14, 15; start time 22
                used = (int(fields[11]) + int(fields[12])) / self._tick
                self._seen[(int(entry.name), fields[19])] = used


@contextlib.contextmanager
def bench_server(name: str, *, keep: bool = False) -> Iterator[tuple[Path, dict[str, str]]]:
    """A temporary folder and the environment of a dvcflow server started for the benchmark (its own home
    in that folder, a free port), its warm starter ready, so that no timed command runs while the
    starter is still importing; the server stopped and the folder removed afterwards (unless `keep`)."""
    from tests.helpers import base_env, free_port

    from dvcflow.proc import zygote

    workdir = Path(tempfile.mkdtemp(prefix=f"dvcflow-bench-{name}-"))
    home = workdir / "home"
    env = base_env(home)
    env.update(DVCFLOW_HOME=str(home), DVCFLOW_PORT=str(free_port()), COLUMNS="120")
    dvcflow = [sys.executable, "-m", "dvcflow"]
    try:
        run_command([*dvcflow, "server", "start"], PROJECT, env)
        if zygote.ping(home) is None:
            raise SystemExit(f"the warm starter of {home} did not answer")
        yield workdir, env
    finally:
        subprocess.run([*dvcflow, "server", "stop"], cwd=PROJECT, env=env, capture_output=True, timeout=120)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def write_result(
    results: Path,
    prefix: str,
    benchmark: str,
    *,
    repeat: int,
    load_before: object,
    load_after: object,
    **fields: object,
) -> Path:
    """A benchmark's samples as `results/PREFIX-<UTC stamp>.json`, with the machine and versions they were
    taken on (what bench/run.py reads back); says where."""
    import json
    import platform
    from datetime import UTC, datetime
    from importlib import metadata

    results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = results / f"{prefix}-{stamp}.json"
    data = {
        "benchmark": benchmark,
        "when": stamp,
        "repeat": repeat,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_before": load_before,
            "load_after": load_after,
        },
        "versions": {name: metadata.version(name) for name in ("prefect", "dvc", "dvcflow")},
        **fields,
    }
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"Wrote {out.relative_to(results.parents[1])}")
    return out
