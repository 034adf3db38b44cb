"""Run ONE stage as `dvc repro` would, in this process, and record it through DVC.

`execute` asks the `PipelineSession` (the DVC adapter) to prepare the stage (skip it if DVC finds it up to
date, take its DVC locks, remove its outputs unless `persist`, take it from DVC's run cache if it has this
exact run), then runs its command in its wdir as a subprocess, every output line handed to `log` as it
arrives — or calls the stage's registered in-process function — and finally has DVC hash the outputs,
cache them and write `dvc.lock`. Only the short DVC calls hold DVC's repository lock, so stages run in
parallel threads; from `prepare` to `record` the stage holds DVC's read-write locks of its deps and
outputs, as `dvc repro` does while its command runs, so that another DVC process cannot run it meanwhile.

No Prefect here: the task in `engine.task` gives `log` the task's logger.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from dvcflow.core.errors import PipelineError
from dvcflow.core.failures import ERROR_LINES, exit_cause, last_lines, stage_failure
from dvcflow.dvc.repository import in_directory
from dvcflow.dvc.session import OutputRecord, PipelineSession, Prepared
from dvcflow.engine.plugins import StageFunction, command_arguments
from dvcflow.proc.children import stream_process

_sessions: dict[Path, PipelineSession] = {}
_sessions_lock = threading.Lock()


def open_session(root: Path) -> PipelineSession:
    """The run's DVC session for `root` in this process, opened on first use: by the run's pre-flight
    checks (which the flow then reuses instead of loading DVC's index again), by the flow, or on a Dask
    worker. Closed by `close_session` when the run ends. The process's working directory is left as it
    is: each DVC call moves into the repository for its duration (`dvc.repository.in_repository`)."""
    with _sessions_lock:
        if root not in _sessions:
            _sessions[root] = PipelineSession(root)
        return _sessions[root]


def close_session(root: Path) -> None:
    """Forget `root`'s session (the next `open_session` reads the repository afresh); idempotent."""
    with _sessions_lock:
        session = _sessions.pop(root, None)
    if session is not None:
        session.close()


class Status(StrEnum):
    RAN = "ran"
    RESTORED = "restored"
    """Taken from DVC's run cache: outputs checked out, nothing ran."""
    UP_TO_DATE = "up to date"
    PULLED = "pulled"
    """Only its data was missing: fetched from the DVC remote (`--pull`), nothing ran."""


@dataclass(frozen=True)
class StageResult:
    """What a stage task returns (and Prefect stores under run-b): the outputs as DVC recorded them."""

    stage: str
    status: Status
    outputs: tuple[OutputRecord, ...]


def _quoted(name: str) -> str:
    return f"'{name}'" if name.endswith(".dvc") else f"Stage '{name}'"


def execute(
    session: PipelineSession,
    name: str,
    *,
    force: bool,
    check_changed: bool,
    function: StageFunction | None = None,
    log: Callable[[str], None],
    pull: bool = False,
    allow_missing: bool = False,
    holding: Callable[[], contextlib.AbstractContextManager[Mapping[str, str]]] | None = None,
) -> StageResult:
    """Run stage `name` if it needs to (see the module doc); `PipelineError` when it fails. `pull` and
    `allow_missing` are `dvc repro --pull/--allow-missing`: a stage whose only change is missing data is
    skipped (`allow_missing`) or fetched from the remote (`pull`), as `Stage.reproduce` does. `holding`
    (the resources it declares: `dvcflow.api.limits`) is entered before `prepare` touches the outputs and
    left before `record`, for a stage DVC finds changed; it gives variables for the command's environment
    (`CUDA_VISIBLE_DEVICES`)."""
    spec = session.spec(name)
    if check_changed and not force and (pull or allow_missing) and session.missing_data_only(name):
        if allow_missing:
            log(f"{_quoted(name)} didn't change, skipping")
            return StageResult(name, Status.UP_TO_DATE, session.recorded_outputs(name))
        if session.pull_stage(name, log):
            return StageResult(name, Status.PULLED, session.recorded_outputs(name))
    if spec.by_dvc:
        if session.reproduce_by_dvc(name, force=force, pull=pull, allow_missing=allow_missing):
            log(f"Verified and recorded {name}")
            return StageResult(name, Status.RAN, session.recorded_outputs(name))
        log(f"{_quoted(name)} didn't change, skipping")
        return StageResult(name, Status.UP_TO_DATE, session.recorded_outputs(name))
    if holding is not None and check_changed and not force and not session.changed(name):
        log(f"{_quoted(name)} didn't change, skipping")  # no wait for resources it would not use
        return StageResult(name, Status.UP_TO_DATE, session.recorded_outputs(name))
    held = contextlib.ExitStack()
    try:
        # The resources first: their wait may be minutes, and a run killed meanwhile must leave the
        # stage's outputs and DVC's locks as they were (`prepare` deletes the one and takes the other).
        extra_env = held.enter_context(holding()) if holding is not None else {}
        prepared = session.prepare(name, force=force, check_changed=check_changed, pull=pull)
        if prepared is Prepared.UP_TO_DATE:
            log(f"{_quoted(name)} didn't change, skipping")
            return StageResult(name, Status.UP_TO_DATE, session.recorded_outputs(name))
        if prepared is Prepared.RESTORED:
            log(f"Stage '{name}' is cached - skipping run, checked out its outputs from the DVC cache")
            return StageResult(name, Status.RESTORED, session.recorded_outputs(name))
        log(f"Running stage '{name}':")
        try:
            if function is not None:
                _call(function, spec.commands, spec.wdir, log)
            else:
                commands, cwd, env = session.command_env(name)
                env.update(extra_env)
                for command, shown in zip(commands, spec.commands, strict=True):
                    log(f"> {shown}")
                    _stream(name, command, shown, cwd, env, log)
        except BaseException:
            session.abandon(name)
            raise
    finally:
        held.close()
    outputs = session.record(name)
    log(f"Recorded {', '.join(f'{out.path} ({out.md5})' for out in outputs) or 'the stage'} in dvc.lock")
    return StageResult(name, Status.RAN, outputs)


def _stream(
    name: str, command: list[str], shown: str, cwd: Path, env: dict[str, str], log: Callable[[str], None]
) -> None:
    returncode, tail = stream_process(command, cwd, env, log)
    if returncode != 0:  # the command's last lines say why (`core.failures`); the command is in the log
        cause = exit_cause(returncode)
        raise PipelineError(stage_failure(tail, cause if last_lines(tail) else f"`{shown}`: {cause}"))


def _call(function: StageFunction, commands: tuple[str, ...], wdir: Path, log: Callable[[str], None]) -> None:
    argv = command_arguments(function.stage, commands)
    target = function.load()
    log(f"> {function.target}({argv})")
    said: deque[str] = deque(maxlen=ERROR_LINES)
    argv_before = list(sys.argv)  # DVC's locks name this process by it (`PipelineSession._hold`)
    # One in-process function (or DVC call) at a time in this process: `in_directory` holds the lock that
    # also makes the function's thread the only one whose prints `_printed_lines` takes.
    with in_directory(wdir), _printed_lines(log, said):
        try:
            returned = target(argv)
        except SystemExit as exc:  # `sys.exit(...)`: as for a command (a text is printed, the status 1)
            returned = exc.code
            if returned is not None and not isinstance(returned, int):
                print(returned, file=sys.stderr)
                returned = 1
        except Exception as exc:  # the function's own words, after what it printed
            said.extend(f"{type(exc).__name__}: {exc}".splitlines())
            raise PipelineError(stage_failure(said, f"raised by {function.target}")) from exc
        finally:
            sys.argv[:] = argv_before
    if isinstance(returned, int) and not isinstance(returned, bool) and returned != 0:
        raise PipelineError(stage_failure(said, f"{function.target} returned {returned}"))


class _ThreadLines:
    """`sys.stdout`/`sys.stderr` while an in-process function runs: what its thread prints goes line by
    line to `log` (the task's log, as a command's lines do) and the last lines into `said`; every other
    thread's writes, and anything written while a line is being logged, go to the stream as before."""

    def __init__(self, stream: Any, log: Callable[[str], None], said: deque[str]) -> None:
        self._stream = stream
        self._log = log
        self._said = said
        self._thread = threading.get_ident()
        self._partial = ""
        self._logging = False

    def write(self, text: str) -> int:
        if threading.get_ident() != self._thread or self._logging:
            return int(self._stream.write(text))
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        if threading.get_ident() != self._thread or self._logging:
            self._stream.flush()

    def close_line(self) -> None:
        if self._partial:
            self._emit(self._partial)
            self._partial = ""

    def _emit(self, line: str) -> None:
        line = line.rstrip().expandtabs(4)
        if not line.strip():
            return
        self._said.append(line)
        self._logging = True
        try:
            self._log(line)
        finally:
            self._logging = False

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno...: the stream's
        return getattr(self._stream, name)


@contextlib.contextmanager
def _printed_lines(log: Callable[[str], None], said: deque[str]) -> Iterator[None]:
    """Around an in-process function: its prints (stdout and stderr) to `log`, its last lines in `said`."""
    out, err = _ThreadLines(sys.stdout, log, said), _ThreadLines(sys.stderr, log, said)
    previous = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = previous
        out.close_line()
        err.close_line()
