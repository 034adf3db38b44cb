"""TODO docstring."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dvcflow.proc import tether

_METRICS_MARK = "\x00dvcflow-metrics "


READY_MARK = "\x00dvcflow-ready\n"  # a waiting child has imported DVC (not shown as output)


@dataclass(frozen=True)
class CommandResult:
    args: tuple[str, ...]
    returncode: int
    tail: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# The DVC processes running now, so a Ctrl-C caught in the main thread can stop those that worker
# threads started (a signal sent to dvcflow alone does not reach them).
TAIL_LINES = 15

_RUNNING: set[subprocess.Popen[str]] = set()


# Re-entrant: a SIGINT handler (`runner._ctrl_c_ends_at_once`) calls `interrupt_commands` in the main
# thread, which may be inside `_pump` holding this lock at that moment.
_RUNNING_LOCK = threading.RLock()


# Set by `interrupt_commands`: the command is ending, so a DVC process or stage command that starts
# later (a stage still preparing, a retry) is stopped as soon as it starts, and no retry is attempted.
_INTERRUPTED = threading.Event()


def interrupted() -> bool:
    """Whether `interrupt_commands` was called (since `clear_interrupted`)."""
    return _INTERRUPTED.is_set()


def clear_interrupted() -> None:
    """Forget an earlier interrupt: for a process that goes on to run something else (tests, a library)."""
    _INTERRUPTED.clear()


def interrupt_commands(grace: float = 10.0) -> int:
    """Stop every DVC process `stream_dvc` is running (SIGINT, then harder after `grace` s), and any that
    starts from now on; the count of those running now."""
    with _RUNNING_LOCK:
        _INTERRUPTED.set()
        running = list(_RUNNING)
    stoppers = [threading.Thread(target=_stop, args=(process, grace)) for process in running]
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join()
    return len(running)


def stream_process(
    command: Sequence[str], cwd: Path, env: dict[str, str], on_line: Callable[[str], None]
) -> tuple[int, tuple[str, ...]]:
    """Run any `command` (a stage's `cmd`) like `stream_dvc` runs DVC: every non-blank output line to
    `on_line` as it arrives, in a process group of its own that a Ctrl-C reaches; its exit code and last
    lines. On Linux it runs through the `tether` shim, so it and its children die with dvcflow."""
    argv = tether.shim_command(list(command)) if sys.platform.startswith("linux") else list(command)
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        process_group=0 if os.name == "posix" else None,  # see `_signal`
    )
    result, _ = _pump(process, tuple(command), on_line)
    return result.returncode, result.tail


def _pump(
    process: subprocess.Popen[str], args: tuple[str, ...], on_line: Callable[[str], None]
) -> tuple[CommandResult, str | None]:
    """Stream a started process's lines to `on_line` (a metrics line aside); stop it if interrupted."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    shown: str | None = None
    with process:
        assert process.stdout is not None
        with _RUNNING_LOCK:
            _RUNNING.add(process)
            late = _INTERRUPTED.is_set()
        try:
            if late:  # started after a Ctrl-C: stopped at once, as those running then were
                _stop(process)
            for raw in process.stdout:
                if raw == READY_MARK:
                    continue
                if raw.startswith(_METRICS_MARK):
                    shown = raw.removeprefix(_METRICS_MARK)
                    continue
                line = raw.rstrip().expandtabs(4)
                if line.strip():
                    tail.append(line)
                    on_line(line)
        except BaseException:  # Ctrl-C, or the task was cancelled: let it stop cleanly first
            _stop(process)
            raise
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(process)
        returncode = process.wait()
    return CommandResult(tuple(args), returncode, tuple(tail)), shown


def _signal(process: subprocess.Popen[str], sig: int) -> None:
    """Signal DVC and the stage command it runs, as a terminal's Ctrl-C signals the foreground group.

    DVC ignores SIGINT while a stage's command runs and leaves stopping to the command, which a
    terminal signals too; DVC runs in a process group of its own so dvcflow can do the same (also for
    DVC processes started from worker threads, which a Ctrl-C caught by dvcflow would not reach).
    """
    with contextlib.suppress(ProcessLookupError):
        if os.name == "posix":
            os.killpg(process.pid, sig)
        else:  # pragma: no cover - dvcflow runs on Linux and macOS
            process.send_signal(sig)


TERM_WAIT_S = 5.0  # after SIGTERM, how long `_stop` waits before SIGKILL


def _stop(process: subprocess.Popen[str], grace: float = 10.0) -> None:
    """SIGINT first, as a terminal's Ctrl-C would, so DVC never dies halfway through writing dvc.lock."""
    if process.poll() is not None:
        return
    _signal(process, signal.SIGINT)
    try:
        process.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        _signal(process, signal.SIGTERM)
    try:
        process.wait(timeout=TERM_WAIT_S)
    except subprocess.TimeoutExpired:
        _signal(process, signal.SIGKILL)
        process.wait()
