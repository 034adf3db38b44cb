"""The one way the benchmarks time a command: wall seconds, and the CPU seconds of its process tree."""

from __future__ import annotations

import resource
import subprocess
import time
from pathlib import Path


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
