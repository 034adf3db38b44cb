"""Process control, in one place: how dvcflow starts a child process, streams its output, stops it (the
polite signal first, SIGKILL last) and ties it to its own life.

Every process dvcflow runs for a pipeline (DVC, and a stage's command under `run-b`) is started by
`start` in a process group of its own, so that dvcflow can pass on a Ctrl-C the way a terminal does, to
the process and what it runs; its lines are read by `stream`, which also remembers it until it ends, so
that a Ctrl-C caught in the main thread reaches the processes worker threads started
(`interrupt_commands`). Whatever dvcflow stops, these children or the local Prefect server
(`dvcflow.server.control`), it stops with `stop_then_kill`: the escalation and its grace periods are
written once, here.

A child must not outlive a SIGKILLed dvcflow (it would race the next run): the tie is the `tether`
module beside this one, which a Python child calls itself (`tie_to_parent`, see `dvcflow.dvc.child`)
and any other command runs under as a shim (`tethered`). `tether` keeps its own short copy of the
escalation: it runs as a standalone program that cannot import this module. Nor must a killed run's child
let the next run start beside it: `start` hands the run lock's descriptor down (`hand_down`), and the
child keeps it open until its process group has ended (`tether.HOLD_FDS_ENV`). A child that prompts on
the terminal from its background group is lent the terminal while it asks (`terminal`, beside this one).

Nothing here knows what runs: a caller that talks with its child through marked lines takes them out
of the output with the `aside` filter of `stream` (`dvcflow.dvc.commands`). psutil is imported only
when a process that is not a `Popen` of ours is waited for, never on the way to `dvcflow --help`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvcflow.proc import terminal, tether


@dataclass(frozen=True)
class CommandResult:
    args: tuple[str, ...]
    returncode: int
    tail: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.returncode == 0


TAIL_LINES = 15  # of a command's output, kept for its error message

INTERRUPT_GRACE_S = 10.0  # after SIGINT, how long `interrupt_commands` waits before SIGTERM
TERM_WAIT_S = 5.0  # after SIGTERM, how long a child is given before SIGKILL
# How a command that held the terminal ends when a Ctrl-C was typed there: killed by SIGINT, DVC's own code
# for KeyboardInterrupt, or DVC's last line for a stage command SIGINT killed. Not 130: a command may exit
# with it on its own, and its failure must not pass for a Ctrl-C.
_ENDED_BY_CTRL_C = (-signal.SIGINT, 252)
_STAGE_ENDED_BY_CTRL_C = re.compile(r"exited with -2$")
_POLL_S = 0.05  # how often a process that is not our `Popen` is looked at while waiting for its end

# The processes `stream` reads now, so a Ctrl-C caught in the main thread can stop those that worker
# threads started (a signal sent to dvcflow alone does not reach them).
_RUNNING: set[subprocess.Popen[str]] = set()

# Re-entrant: a SIGINT handler (`dvcflow.services.launch`) calls `interrupt_commands` in the main
# thread, which may be inside `stream` holding this lock at that moment.
_RUNNING_LOCK = threading.RLock()

_TETHERS = sys.platform.startswith("linux")  # elsewhere a stage command runs without the shim

# Descriptors every process `start` starts in a folder (or below it) inherits, with that folder: the run
# lock of a repository this process runs in (`dvcflow.proc.runlock`). Keyed by descriptor: two handles of
# one repository may be open at once (one opened ahead, one waiting in another thread).
_HANDED_DOWN: dict[int, Path] = {}

# Set by `interrupt_commands`: the command is ending, so a DVC process or stage command that starts
# later (a stage still preparing, a retry) is stopped as soon as it starts, and no retry is attempted.
_INTERRUPTED = threading.Event()


# ------------------------------------------------------------------------------------------- starting


def start(
    argv: Sequence[str], cwd: Path, env: dict[str, str], *, stdin_pipe: bool = False
) -> subprocess.Popen[str]:
    """Start `argv` as the leader of a process group of its own (see `stop_then_kill`), its output
    (stderr included) to be read line by line with `stream`; its stdin a pipe with `stdin_pipe`, else
    nothing. It inherits the descriptors handed down for `cwd` (`hand_down`), named in its environment
    for `tether`, which keeps them (`argv` is a tethered Python child, or `tethered`)."""
    folder = Path(cwd).resolve()
    held = tuple(fd for fd, root in tuple(_HANDED_DOWN.items()) if _TETHERS and folder.is_relative_to(root))
    if held:
        env = {**env, tether.HOLD_FDS_ENV: ",".join(map(str, held))}
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        pass_fds=held,
        stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        process_group=0,
    )


def hand_down(fd: int, folder: Path) -> None:
    """Have every process `start` starts in `folder` (or below it) inherit `fd`, until `stop_handing_down`:
    the run lock's descriptor, which such a child (DVC, a stage command's shim) keeps open until its
    process group has ended, so that the lock outlives a SIGKILLed dvcflow until then."""
    _HANDED_DOWN[fd] = folder.resolve()


def stop_handing_down(fd: int) -> None:
    _HANDED_DOWN.pop(fd, None)


def tethered(command: Sequence[str]) -> list[str]:
    """`command` run through the tether shim, so that it and its process group end when dvcflow does,
    even by SIGKILL (Linux; elsewhere `command` as it is)."""
    return tether.shim_command(list(command)) if _TETHERS else list(command)


def tie_to_parent(parent: int) -> bool:
    """Called by a Python child itself, first thing: end with dvcflow (pid `parent`), taking its
    process group along; False when `parent` is gone already, so there is no one to run for.

    A child the warm starter forked (`zygote.forked_here`) has the starter as its parent, whose death
    must not end a command that runs on: the zygote ties it to its client instead (`zygote._watch_client`),
    and the client is tied to dvcflow."""
    from dvcflow.proc import zygote

    return tether.tether(parent, deathsig=not zygote.forked_here())


# ------------------------------------------------------------------------------------------ streaming


def stream_process(
    command: Sequence[str], cwd: Path, env: dict[str, str], on_line: Callable[[str], None]
) -> tuple[int, tuple[str, ...]]:
    """Run any `command` (a stage's `cmd`): every non-blank output line to `on_line` as it arrives, in a
    process group of its own that a Ctrl-C reaches, tied to dvcflow (`tethered`); its exit code and last
    lines."""
    result = stream(start(tethered(command), cwd, env), tuple(command), on_line)
    return result.returncode, result.tail


def stream(
    process: subprocess.Popen[str],
    args: tuple[str, ...],
    on_line: Callable[[str], None],
    *,
    aside: Callable[[str], bool] | None = None,
) -> CommandResult:
    """Read a started process's output to its end: each line that `aside` does not take (it gets the
    raw line and says True when the line was meant for the caller, not for output) stripped, and to
    `on_line` unless blank. Stopped as a Ctrl-C would stop it if `interrupt_commands` is called, or was,
    or if reading is interrupted (a Ctrl-C, a cancelled task)."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with process:
        assert process.stdout is not None
        with _RUNNING_LOCK:
            _RUNNING.add(process)
            late = _INTERRUPTED.is_set()
        terminal.watch(process.pid)  # it may prompt on the terminal (a password): lend it then
        held_terminal = False
        try:
            if late:  # started after a Ctrl-C: stopped at once, as those running then were
                _interrupt(process)
            for raw in process.stdout:
                if aside is not None and aside(raw):
                    continue
                line = raw.rstrip().expandtabs(4)
                if line.strip():
                    tail.append(line)
                    on_line(line)
        except BaseException:  # Ctrl-C, or the task was cancelled: let it stop cleanly first
            _interrupt(process)
            raise
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(process)
            held_terminal = terminal.unwatch(process.pid)
        returncode = process.wait()
    if held_terminal and not _INTERRUPTED.is_set() and _ended_by_ctrl_c(returncode, tail):
        os.kill(os.getpid(), signal.SIGINT)  # typed at its prompt, where dvcflow did not get it
    return CommandResult(tuple(args), returncode, tuple(tail))


def _ended_by_ctrl_c(returncode: int, tail: deque[str]) -> bool:
    return returncode in _ENDED_BY_CTRL_C or any(_STAGE_ENDED_BY_CTRL_C.search(line) for line in tail)


# ------------------------------------------------------------------------------------------- stopping


def interrupted() -> bool:
    """Whether `interrupt_commands` was called (since `clear_interrupted`)."""
    return _INTERRUPTED.is_set()


def clear_interrupted() -> None:
    """Forget an earlier interrupt: for a process that goes on to run something else (tests, a library)."""
    _INTERRUPTED.clear()


def interrupt_commands(grace: float = INTERRUPT_GRACE_S) -> int:
    """Stop every process `stream` is reading (SIGINT, then harder after `grace` s), and any that
    starts from now on; the count of those running now."""
    with _RUNNING_LOCK:
        _INTERRUPTED.set()
        running = list(_RUNNING)
    stoppers = [threading.Thread(target=_interrupt, args=(process, grace)) for process in running]
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join()
    return len(running)


def stop_commands_in(folder: Path, grace: float = TERM_WAIT_S) -> int:
    """Stop every process `stream` is reading that runs in `folder` or below it (SIGTERM to its group,
    SIGKILL after `grace` s): one sweep trial's DVC and stage command, the other trials untouched. The
    count stopped."""
    import psutil

    def inside(process: subprocess.Popen[str]) -> bool:
        try:
            return Path(psutil.Process(process.pid).cwd()).is_relative_to(folder)
        except psutil.Error:
            return False

    with _RUNNING_LOCK:
        chosen = [process for process in _RUNNING if inside(process)]
    for process in chosen:
        stop_then_kill(process, ((signal.SIGTERM, grace),))
    return len(chosen)


def _interrupt(process: subprocess.Popen[str], grace: float = INTERRUPT_GRACE_S) -> None:
    """SIGINT first, as a terminal's Ctrl-C would, so DVC never dies halfway through writing dvc.lock.

    DVC ignores SIGINT while a stage's command runs and leaves stopping to the command, which a
    terminal signals too; DVC runs in a process group of its own so dvcflow can do the same (also for
    DVC processes started from worker threads, which a Ctrl-C caught by dvcflow would not reach)."""
    stop_then_kill(process, ((signal.SIGINT, grace), (signal.SIGTERM, TERM_WAIT_S)))


def stop_then_kill(process: subprocess.Popen[Any] | int, steps: Sequence[tuple[int, float]]) -> None:
    """Stop `process` (a `Popen`, or a pid): send it each signal of `steps` in turn and wait up to the
    seconds that follow the signal for it to end; SIGKILL it if it still runs after the last; reap it
    when it is a child of this process. Nothing happens to a process that has ended already.

    A process that leads a process group of its own gets each signal with its group: what it started
    there (DVC's stage command, the server's workers) is stopped with it, as a terminal's Ctrl-C would."""
    pid = process if isinstance(process, int) else process.pid
    if _ended(process, 0):
        return
    for signum, grace in steps:
        _send(pid, signum)
        if _ended(process, grace):
            return
    _send(pid, signal.SIGKILL)
    if isinstance(process, int):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    else:
        process.wait()


def _send(pid: int, signum: int) -> None:
    """`signum`, then SIGCONT, as a shell's `kill` does: a stopped process (one waiting for the terminal,
    `terminal`) would not act on it until continued."""
    send = os.killpg if leads_group(pid) else os.kill
    with contextlib.suppress(ProcessLookupError):
        send(pid, signum)
        if signum != signal.SIGKILL:
            send(pid, signal.SIGCONT)


def _ended(process: subprocess.Popen[Any] | int, timeout: float) -> bool:
    """Whether `process` ends within `timeout` s (reaped if it is our child)."""
    if not isinstance(process, int):
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ChildProcessError):  # not our child: its parent reaps it
            os.waitpid(process, os.WNOHANG)
        if not running(process):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


# ------------------------------------------------------------------------------------ looking at one


def running(pid: int) -> bool:
    """Whether process `pid` exists and has not ended: a zombie (ended, not reaped yet by a parent that
    may never do it) has ended."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # exists, owned by someone else
        return True


def command_line(pid: int) -> list[str] | None:
    """The arguments process `pid` was started with; None when it is gone or they cannot be read."""
    import psutil

    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return None


def lineage() -> set[int]:
    """This process and every process above it (the shell, a script, a test runner that started it)."""
    import psutil

    me = psutil.Process()
    return {me.pid, *(parent.pid for parent in me.parents())}


def leads_group(pid: int) -> bool:
    """Whether process `pid` leads a process group (its own, started with `process_group=0` or a new
    session)."""
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False
