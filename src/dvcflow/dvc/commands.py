"""DVC as a command: `dvc repro` and `dvc push` run in a child process, streamed line by line into the
caller's log, and what their output says read back (which stages ran, why a command failed).

Why a child and not DVC in this process: `dvc repro` holds DVC's repository lock for the whole run and
runs the stages' commands itself; in a child it can be interrupted as a terminal would (see
`dvcflow.proc.children`), dies with dvcflow, and leaves dvcflow's own process free for Prefect. The child
(`dvcflow.dvc.child`) talks back on marked lines, which this module takes out of the output: one that
says DVC is imported (a warmed-up child waiting for its go) and one that carries the metrics read by the
same DVC start-up after a successful `repro`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dvcflow.core.errors import PipelineError, StageCommandError
from dvcflow.core.failures import exit_cause, stage_failure
from dvcflow.core.metrics import MetricsFiles
from dvcflow.core.records import StagesReport
from dvcflow.dvc.repository import dvc_environment
from dvcflow.proc import children
from dvcflow.proc.children import CommandResult

METRICS_ENV = "DVCFLOW_DVC_METRICS"  # "1": after success, the child prints the metrics on a marked line
METRICS_MARK = "\x00dvcflow-metrics "  # starts that line; JSON follows
WAIT_ENV = "DVCFLOW_DVC_WAIT"  # "1": the child imports DVC, then waits for a line on stdin to run
READY_MARK = "\x00dvcflow-ready\n"  # a waiting child has imported DVC (not shown as output)


def dvc_command(*args: str) -> list[str]:
    """DVC from this interpreter, not whichever `dvc` comes first on PATH."""
    return [sys.executable, "-m", "dvcflow.dvc.child", *args]


_WarmKey = tuple[str, tuple[str, ...], bool]

_warm: dict[_WarmKey, subprocess.Popen[str]] = {}


def _spawn(
    args: Sequence[str], cwd: Path, *, metrics: bool, wait: bool, extra_env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    env = {**dvc_environment(), **(extra_env or {})}
    if metrics:
        env[METRICS_ENV] = "1"
    if wait:
        env[WAIT_ENV] = "1"
    return children.start(dvc_command(*args), cwd, env, stdin_pipe=wait)


def warm_up(args: Sequence[str], cwd: Path, *, metrics: bool = False) -> None:
    """Start the interpreter and DVC's import for a `dvc ARGS` about to be asked for, so that they
    overlap with Prefect's import (2 cores: ~0.4 s off a run). It runs nothing until `stream_dvc`
    (or `repro`) asks for the same command; unclaimed, it exits when this process does."""
    key = (str(cwd), tuple(args), metrics)
    if key not in _warm:
        _warm[key] = _spawn(args, cwd, metrics=metrics, wait=True)


def _claim(args: Sequence[str], cwd: Path, metrics: bool) -> subprocess.Popen[str] | None:
    process = _warm.pop((str(cwd), tuple(args), metrics), None)
    if process is None or process.stdin is None:
        return None
    try:
        process.stdin.write("run\n")
        process.stdin.close()
    except OSError:  # it died while waiting: start afresh
        process.wait()
        return None
    return process


def stream_dvc(args: Sequence[str], cwd: Path, on_line: Callable[[str], None]) -> CommandResult:
    """Run `dvc ARGS` in `cwd`, handing every non-blank output line to `on_line` as it arrives."""
    return _streamed(args, cwd, on_line, metrics=False)[0]


def _streamed(
    args: Sequence[str],
    cwd: Path,
    on_line: Callable[[str], None],
    *,
    metrics: bool,
    extra_env: Mapping[str, str] | None = None,
) -> tuple[CommandResult, str | None]:
    """The command's result and the JSON of its metrics line, if it printed one; `extra_env` on top of
    DVC's environment (then not a warmed-up child, which has its own)."""
    warm = None if extra_env else _claim(args, cwd, metrics)
    process = warm or _spawn(args, cwd, metrics=metrics, wait=False, extra_env=extra_env)
    marked: list[str] = []

    def aside(raw: str) -> bool:
        if raw.startswith(METRICS_MARK):
            marked.append(raw.removeprefix(METRICS_MARK))
            return True
        return raw == READY_MARK

    result = children.stream(process, tuple(args), on_line, aside=aside)
    return result, marked[-1] if marked else None


# DVC's ERROR lines for failures a second attempt may not repeat: a stage's command exited non-zero
# (`StageCmdFailedError`), or another DVC process held the repository lock (`LockError`). Anything else
# (missing data, an invalid dvc.yaml, an unknown target) fails the same way every time.
_RETRYABLE = re.compile(r"failed to run: |Unable to acquire lock|is busy|exited with -?\d+")


# DVC's ERROR line for a stage whose command failed (`StageCmdFailedError` under `ReproductionError`).
_COMMAND_FAILED = re.compile(
    r"^failed to reproduce '(?P<stage>[^']+)': failed to run: .*, exited with (?P<code>-?\d+)$"
)


def failure(result: CommandResult) -> PipelineError:
    """A readable error from a failed DVC command, in the words of what failed: for a stage whose command
    failed, `failed to reproduce 'train': <its last output lines> (exit code 1)` (`core.failures`);
    otherwise DVC's own ERROR line, or the command's last lines when DVC said none (it was killed).

    A `StageCommandError` (worth a retry) when a stage's command failed; a `PipelineError` otherwise.
    """
    errors = [index for index, line in enumerate(result.tail) if line.startswith("ERROR:")]
    if not errors:
        cause = f"`dvc {result.args[0]}`: {exit_cause(result.returncode)}"
        return StageCommandError(stage_failure(_stage_output(result.tail), cause))
    headline = result.tail[errors[-1]].removeprefix("ERROR:").strip()
    kind = StageCommandError if _RETRYABLE.search(headline) else PipelineError
    command = _COMMAND_FAILED.match(headline)
    if command is None:
        return kind(headline)
    said = _stage_output(result.tail[: errors[-1]])
    cause = exit_cause(int(command["code"]))
    return kind(f"failed to reproduce '{command['stage']}': {stage_failure(said, cause)}")


def _stage_output(lines: Sequence[str]) -> list[str]:
    """What the failed stage's command printed: the lines after DVC's `Running stage` line, without
    DVC's echo of each command (`> cmd`) and its own ERROR and WARNING lines."""
    starts = [index for index, line in enumerate(lines) if _RUNNING.match(line.strip())]
    since = lines[starts[-1] + 1 :] if starts else lines
    return [line for line in since if not line.startswith(("> ", "ERROR:", "WARNING:"))]


# What `dvc repro` logs for each stage it visits (see `Stage.reproduce` and `stage.cache`), and the stage
# it stopped at (`dvc.repo.reproduce._raise_error`).
_RUNNING = re.compile(r"^Running stage '(?P<name>.+)':$")
_STAGE_LINES = (
    ("ran", _RUNNING),
    ("skipped", re.compile(r"^(?:Stage )?'(?P<name>.+)' didn't change, skipping$")),  # or a `.dvc` file
    ("pulled", re.compile(r"^Pulling data for (?:stage: )?'(?P<name>.+)'$")),
    ("restored", re.compile(r"^Stage '(?P<name>.+)' is cached - skipping run, checking out outputs$")),
    ("failed", re.compile(r"^ERROR: failed to reproduce '(?P<name>[^']+)'")),
)


class StageLog:
    """Reads `dvc repro`'s output line by line and records what happened to each stage.

    The stage names are DVC's `addressing`, which equals `dvcflow.dvc.session.address` when DVC runs in the
    repository root.
    """

    def __init__(self) -> None:
        self._seen: dict[str, list[str]] = {kind: [] for kind, _ in _STAGE_LINES}

    def feed(self, line: str) -> None:
        text = line.strip()
        for kind, pattern in _STAGE_LINES:
            match = pattern.match(text)
            if match:
                self._seen[kind].append(match["name"])
                return

    def report(self) -> StagesReport:
        """Each stage once; DVC may log "Pulling data" and then run the stage after all (the remote
        lacked its data): such a stage ran. The stage DVC stopped at failed, whether or not its command
        started."""
        failed = tuple(dict.fromkeys(self._seen["failed"]))
        ran = tuple(name for name in dict.fromkeys(self._seen["ran"]) if name not in failed)

        def others(kind: str) -> tuple[str, ...]:
            return tuple(name for name in dict.fromkeys(self._seen[kind]) if name not in ran + failed)

        return StagesReport(ran, others("skipped"), others("pulled"), others("restored"), failed)


def push(root: Path, stages: Sequence[str], on_line: Callable[[str], None]) -> CommandResult:
    """`dvc push` of the given stages' outputs (all tracked data when `stages` is empty)."""
    return stream_dvc(["push", *stages], cwd=root, on_line=on_line)


@dataclass(frozen=True)
class ReproRun:
    """A `dvc repro` process, and the metrics that same process read after it succeeded."""

    result: CommandResult
    metrics: MetricsFiles | None  # None: not asked for, the command failed, or DVC could not read them


def repro(
    root: Path,
    args: Sequence[str],
    on_line: Callable[[str], None],
    *,
    metrics: bool,
    extra_env: Mapping[str, str] | None = None,
) -> ReproRun:
    """`dvc ARGS` (a `repro`) streamed like `stream_dvc`; with `metrics`, the DVC process then reads the
    metrics too, which spares the caller a second DVC start-up (~0.7 s) to open the repository again.
    `extra_env`: for every stage's command too (a sweep trial's `CUDA_VISIBLE_DEVICES`)."""
    import json

    result, shown = _streamed(args, root, on_line, metrics=metrics, extra_env=extra_env)
    return ReproRun(result, json.loads(shown) if result.ok and shown else None)
