"""Lend the terminal to the one child that prompts on it (DVC or git asking for a password, ssh, a stage
command's `getpass`), as a shell's job control would, and take it back once the prompt is answered.

Why: dvcflow runs DVC and stage commands in process groups of their own (`children.start`), so that a
Ctrl-C reaches them through dvcflow; that puts them in the terminal's background, where the kernel stops
a process that reads the terminal or changes its modes (SIGTTIN/SIGTTOU), and the run would wait for ever.
While dvcflow is the terminal's foreground job, a watcher thread looks at the groups `children.stream`
reads, every `POLL_S`: a stopped one is made the terminal's foreground group and continued. The terminal
comes back to dvcflow when that group has turned the terminal's echo off and on again (a password was
read: ssh, git, `getpass`) or has ended. A group that reads with echo on keeps it until it ends. One group
at a time: a second prompter stays stopped until the first gives the terminal back.

While a command holds the terminal, a Ctrl-C typed there is that command's, as under a shell; when the
command ends by it, `children.stream` passes the Ctrl-C on to dvcflow (`unwatch` says it held the
terminal), so the run stops as for any Ctrl-C.

Linux only (stopped states from /proc). Without a controlling terminal (CI, a pipe, a command served by
the warm starter) or in the terminal's background (`dvcflow ... &`), nothing is watched.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

POLL_S = 0.1  # how often the watched groups (and a lent terminal's echo) are looked at

_LOCK = threading.Lock()
_WATCHED: set[int] = set()  # leaders of the process groups `children.stream` reads now
_TTY: list[int] = []  # the controlling terminal, opened once ([-1]: this process has none)
_WATCHER: list[threading.Thread] = []


@dataclass
class _Loan:
    group: int
    echo_was_off: bool = False


_LOAN: list[_Loan] = []  # the one group the terminal is lent to now, if any


def watch(leader: int) -> None:
    """Lend the terminal to process group `leader` whenever it stops at a prompt, until `unwatch`."""
    if _terminal() is None:
        return
    with _LOCK:
        _WATCHED.add(leader)
        if not _WATCHER or not _WATCHER[0].is_alive():
            _WATCHER[:] = [threading.Thread(target=_watch, name="dvcflow-terminal", daemon=True)]
            _WATCHER[0].start()


def unwatch(leader: int) -> bool:
    """Stop watching group `leader`: True when it held the terminal (which comes back to dvcflow now)."""
    with _LOCK:
        _WATCHED.discard(leader)
        if _LOAN and _LOAN[0].group == leader:
            _give_back()
            return True
    return False


def _terminal() -> int | None:
    """The controlling terminal's descriptor when this process's group is its foreground job."""
    if not sys.platform.startswith("linux"):
        return None
    if not _TTY:
        try:
            _TTY.append(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
            atexit.register(_give_back_at_exit)
        except OSError:  # no controlling terminal
            _TTY.append(-1)
    fd = _TTY[0]
    if fd < 0:
        return None
    try:
        return fd if os.tcgetpgrp(fd) == os.getpgrp() else None
    except OSError:
        return None


def _watch() -> None:
    with _ttou_blocked():  # this thread takes the terminal back from the background
        while True:
            time.sleep(POLL_S)
            with _LOCK:
                if not _WATCHED and not _LOAN:
                    _WATCHER.clear()
                    return
                if _LOAN:
                    _check_loan(_LOAN[0])
                if not _LOAN:
                    stopped = next((group for group in sorted(_WATCHED) if _stopped(group)), None)
                    if stopped is not None:
                        _lend(stopped)


def _check_loan(loan: _Loan) -> None:
    if _stopped(loan.group):  # stopped again while it has the terminal (a Ctrl-Z typed there): go on
        with contextlib.suppress(ProcessLookupError):
            os.killpg(loan.group, signal.SIGCONT)
        return
    try:
        echo = bool(termios.tcgetattr(_TTY[0])[3] & termios.ECHO)
    except termios.error:
        return
    if not echo:
        loan.echo_was_off = True
    elif loan.echo_was_off:  # a password was typed: the terminal is dvcflow's again
        _give_back()


def _lend(group: int) -> None:
    fd = _TTY[0]
    try:
        if os.tcgetpgrp(fd) != os.getpgrp():  # the shell moved dvcflow to the background: not ours to lend
            return
        os.tcsetpgrp(fd, group)
    except OSError:
        return
    _LOAN[:] = [_Loan(group)]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGCONT)


def _give_back() -> None:
    """The terminal to dvcflow's group again (called with `_LOCK` held, from any thread)."""
    if not _LOAN:
        return
    _LOAN.clear()
    with _ttou_blocked(), contextlib.suppress(OSError):
        os.tcsetpgrp(_TTY[0], os.getpgrp())


def _give_back_at_exit() -> None:
    with _LOCK:
        _give_back()


@contextlib.contextmanager
def _ttou_blocked() -> Iterator[None]:
    """A process in the terminal's background may set its foreground group only with SIGTTOU blocked."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _stopped(pid: int) -> bool:
    """Whether process `pid` is stopped by a signal (state T in /proc: SIGTTIN, SIGTTOU, SIGTSTP, SIGSTOP)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] == b"T"
    except (OSError, IndexError):
        return False
