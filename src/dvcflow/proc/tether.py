"""Tie a process dvcflow starts, and its whole process group, to dvcflow's life.

A SIGKILLed dvcflow must leave nothing behind that races the next run: neither the DVC child
(`dvcflow.dvc.child`, which calls `tether` itself) nor a stage command the engine runs
(`dvcflow.proc.children.stream_process`, through this file as a shim: `python -I -S tether.py PARENT_PID
COMMAND...`). Each runs as the leader of a process group of its own (so a Ctrl-C can be forwarded to it and
its children); on Linux the kernel SIGTERMs it when dvcflow dies (PR_SET_PDEATHSIG), and it then passes the
signal on to its group before dying. What still runs in the group `GRACE_S` later (a command that traps or
ignores SIGTERM) is SIGKILLed. A shim started in its caller's group (`--ephemeral`'s temporary Prefect
server, `dvcflow.api.connect`) passes it to its command alone.

The descriptors named in `HOLD_FDS_ENV` (the run lock's, `dvcflow.proc.runlock`, handed down by
`dvcflow.proc.children.start`) stay open in this process and reach nothing it starts: a group leader ends
only once the rest of its group has (it SIGKILLs the others, not itself), and then hands them to a small
process that keeps them until it has been reaped (`_hold_until_reaped`). So a flock held through them
outlives a SIGKILLed dvcflow until the stage's command has ended, and the next run cannot start beside it.

The rest of dvcflow reaches this module through `dvcflow.proc.children`, the one process-control module.
This file is also a program of its own, started in ~15 ms with the standard library only: `-I -S` puts
neither dvcflow nor psutil on its path. So it keeps its own short stop-then-kill (`_stop_then_kill`, the
shim's copy of `children.stop_then_kill`) and reads process groups from `/proc` by hand (`_others_in`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
GRACE_S = 5.0  # for the group to end after SIGTERM, before SIGKILL
KILL_WAIT_S = 5.0  # for the SIGKILLed to be gone (a process in uninterruptible sleep ends when it wakes)
HOLD_FDS_ENV = "DVCFLOW_HOLD_FDS"  # comma-separated descriptors to keep open until the group has ended
_command: int | None = None  # the shim's command, once started
_parent = 0  # the process this one is tied to
_held: list[int] = []  # the descriptors of `HOLD_FDS_ENV`
# Keeps the held descriptors open until the process ARGV[1] is reaped (bounded), given them and nothing else.
_UNTIL_REAPED = (
    "import os, sys, time\n"
    "ends = time.monotonic() + 5\n"
    "while os.path.exists('/proc/' + sys.argv[1]) and time.monotonic() < ends:\n"
    "    time.sleep(0.02)\n"
)
_ENDING = (signal.SIGTERM, signal.SIGHUP)
# Reset to their default in the command: Python ignores SIGPIPE and SIGXFSZ, as `subprocess` undoes too.
_DEFAULTS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, *_ENDING)


def _end_group(signum: int, _frame: object) -> None:
    """Take the process group down with this process (the group's children would survive it).

    Ignore the ending signals until the group has been signalled: the kernel sends the parent-death
    signal again on every re-parenting (a dying dvcflow's threads exit one by one, then init adopts us),
    and a repeat landing on the default action would end this process before its group."""
    for ending in _ENDING:
        signal.signal(ending, signal.SIG_IGN)
    group = os.getpgrp()
    if group == os.getpid():
        # Ignored here, so it cannot cut this handler short. SIGKILL goes to the others one by one, not
        # to the group: this process ends last, the run lock it holds (`HOLD_FDS_ENV`) with it.
        def send(number: int) -> None:
            if number != signal.SIGKILL:
                os.killpg(0, number)
                return
            for pid in _others_in(group):
                _signal(pid, number)

        _stop_then_kill(send, lambda: bool(_others_in(group)), signum)
    elif _command is not None:  # a shim in its caller's group (never signal that): its command only
        command = _command
        _stop_then_kill(lambda number: _signal(command, number), lambda: _running(command), signum)
    _hold_until_reaped()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _hold_until_reaped() -> None:
    """With the parent gone, keep the held descriptors open past this process's end, until it has been
    reaped: an orphan's zombie waits for init, which may look only every few seconds, and DVC counts a
    zombie as alive, so its read-write locks of the stage's files would still refuse the next run."""
    if not _held or os.getppid() == _parent:  # the parent lives: it holds the lock, and reaps us
        return
    with contextlib.suppress(OSError):
        for fd in _held:
            os.set_inheritable(fd, True)
        quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
        script = [sys.executable, "-I", "-S", "-c", _UNTIL_REAPED, str(os.getpid())]
        os.posix_spawn(sys.executable, script, {}, file_actions=quiet)


def _stop_then_kill(send: Callable[[int], None], running: Callable[[], bool], signum: int) -> None:
    """`send` `signum`, then SIGKILL if something is still `running` `GRACE_S` later."""
    send(signum)
    deadline = time.monotonic() + GRACE_S
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    deadline = time.monotonic() + KILL_WAIT_S
    while running() and time.monotonic() < deadline:  # again: what forked meanwhile
        send(signal.SIGKILL)
        time.sleep(0.05)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signum)


def _running(child: int) -> bool:
    """Whether this process's child `child` still runs (reaped once it has ended)."""
    try:
        return os.waitpid(child, os.WNOHANG)[0] != child
    except ChildProcessError:
        return False


def _others_in(group: int) -> list[int]:
    """The live processes other than this one in process group `group` (Linux: /proc; elsewhere none, so
    only the signal is passed on)."""
    me = os.getpid()
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[-1].split()  # state, ppid, pgrp, ...
        except OSError:
            continue
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == group:
            found.append(int(entry))
    return found


def tether(parent: int, deathsig: bool = True) -> bool:
    """Make this process end its process group when it gets SIGTERM or SIGHUP, and (Linux) get SIGTERM
    when `parent` dies; False when `parent` is already gone, so there is no one to run for. Without
    `deathsig`, something else watches the one it runs for (a warm starter's child: its client).
    The descriptors of `HOLD_FDS_ENV` are kept, and kept from what this process starts."""
    global _parent
    _parent = parent
    for held in filter(None, os.environ.pop(HOLD_FDS_ENV, "").split(",")):
        with contextlib.suppress(OSError, ValueError):
            os.set_inheritable(int(held), False)
            _held.append(int(held))
    for signum in _ENDING:
        signal.signal(signum, _end_group)
    if deathsig and sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    return os.getppid() == parent


def shim_command(command: list[str]) -> list[str]:
    """`command` run through this file as a shim tied to the calling process."""
    return [sys.executable, "-I", "-S", __file__, str(os.getpid()), *command]


def _shim(argv: list[str]) -> int:
    """Run COMMAND as a child in this process's group; mirror how it ended."""
    parent, command = int(argv[0]), argv[1:]
    if not tether(parent):
        return 143
    signal.signal(signal.SIGINT, lambda *_: None)  # the group's Ctrl-C is the command's to handle
    global _command
    try:
        pid = _command = os.posix_spawnp(command[0], command, os.environ, setsigdef=_DEFAULTS)
    except OSError as err:
        print(f"{command[0]}: {err.strerror}", file=sys.stderr, flush=True)
        return 127
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # killed by a signal: end the same way, so the caller sees what it would without the shim
        if -code != signal.SIGKILL:
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code  # a signal that does not end a process by default
    return code


if __name__ == "__main__":
    sys.exit(_shim(sys.argv[1:]))
