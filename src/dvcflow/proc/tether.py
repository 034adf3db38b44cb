"""Tie a process dvcflow starts, and its whole process group, to dvcflow's life.

A SIGKILLed dvcflow must leave nothing behind that races the next run: neither the DVC child
(`dvcflow.dvc.child`, which calls `tether` itself) nor a stage command the engine runs
(`dvcflow.proc.children.stream_process`, through this file as a shim: `python -I -S tether.py PARENT_PID
COMMAND...`). Each runs as the leader of a process group of its own (so a Ctrl-C can be forwarded to it and
its children); on Linux the kernel SIGTERMs it when dvcflow dies (PR_SET_PDEATHSIG), and it then passes the
signal on to its group before dying. What still runs in the group `GRACE_S` later (a command that traps or
ignores SIGTERM) is SIGKILLed. A shim started in its caller's group (`--ephemeral`'s temporary Prefect
server, `dvcflow.api.connect`) passes it to its command alone.

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
_command: int | None = None  # the shim's command, once started
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
        # Ignored here, so it cannot cut this handler short; SIGKILL takes this process too: it has
        # nothing left to do.
        _stop_then_kill(lambda number: os.killpg(0, number), lambda: _others_in(group), signum)
    elif _command is not None:  # a shim in its caller's group (never signal that): its command only
        command = _command
        _stop_then_kill(lambda number: _signal(command, number), lambda: _running(command), signum)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _stop_then_kill(send: Callable[[int], None], running: Callable[[], bool], signum: int) -> None:
    """`send` `signum`, then SIGKILL if something is still `running` `GRACE_S` later."""
    send(signum)
    deadline = time.monotonic() + GRACE_S
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    if running():
        send(signal.SIGKILL)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signum)


def _running(child: int) -> bool:
    """Whether this process's child `child` still runs (reaped once it has ended)."""
    try:
        return os.waitpid(child, os.WNOHANG)[0] != child
    except ChildProcessError:
        return False


def _others_in(group: int) -> bool:
    """Whether a live process other than this one is in process group `group` (Linux: /proc; elsewhere
    False, so only the signal is passed on)."""
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return False
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[-1].split()  # state, ppid, pgrp, ...
        except OSError:
            continue
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == group:
            return True
    return False


def tether(parent: int, deathsig: bool = True) -> bool:
    """Make this process end its process group when it gets SIGTERM or SIGHUP, and (Linux) get SIGTERM
    when `parent` dies; False when `parent` is already gone, so there is no one to run for. Without
    `deathsig`, something else watches the one it runs for (a warm starter's child: its client)."""
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
