"""Lend the terminal to a child that stops at a prompt on it (DVC or git asking for a password, ssh, a stage
command's `getpass`), as a shell's job control would, just long enough for it to go on.

Why: dvcflow runs DVC and stage commands in process groups of their own (`children.start`), so that a
Ctrl-C reaches them through dvcflow; that puts them in the terminal's background, where the kernel stops a
process that starts to read the terminal or changes its modes (SIGTTIN/SIGTTOU), and the run would wait for
ever. A watcher thread looks at the groups `children.stream` reads, every `POLL_S`: one stopped by SIGTTIN
or SIGTTOU (not by a person's `kill -STOP`) is made the terminal's foreground group and continued.

The terminal comes back to dvcflow `SETTLE_S` later: a read that has begun goes on in the background (the
kernel checks the foreground only as a read starts), so what is typed reaches the prompt, and a Ctrl-C
typed there reaches dvcflow, which stops the run as for any Ctrl-C. A prompt that touches the terminal again
(`getpass` restoring the echo) stops again and is lent it again. One group at a time; a second prompter
waits, stopped, for its turn. A Ctrl-C typed in the moment a command holds the terminal is that command's:
`unwatch` says it was lent it, so `children.stream` passes on a Ctrl-C that ended it. The terminal's
modes as they were before a command was first lent it come back when that command ends (a prompt killed
with the echo off would leave the shell without echo).

Linux only (stopped states from /proc). Without a controlling terminal (CI, a pipe, a command served by the
warm starter) nothing is watched; in the terminal's background (`dvcflow ... &`) nothing is lent until the
shell brings dvcflow to the foreground.
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
from typing import Any

POLL_S = 0.1  # how often the watched groups are looked at
SETTLE_S = 0.25  # how long a lent group keeps the terminal after it was continued

_LOCK = threading.Lock()
_TTY: list[int] = []  # the controlling terminal, opened once ([-1]: this process has none)
_WATCHER: list[threading.Thread] = []


@dataclass
class _Watched:
    modes: list[Any] | None = None  # the terminal's modes before this group was first lent it
    left: list[Any] | None = None  # the modes as it left them, the last time it gave the terminal back
    lent_at: float | None = None  # while it holds the terminal: when it was continued
    was_lent: bool = False


_WATCHED: dict[int, _Watched] = {}  # group leader → what is known of it


def watch(leader: int) -> None:
    """Lend the terminal to process group `leader` whenever it stops at a prompt, until `unwatch`."""
    with _LOCK:
        if _terminal() is None:
            return
        _WATCHED[leader] = _Watched()
        if not _WATCHER or not _WATCHER[0].is_alive():
            _WATCHER[:] = [threading.Thread(target=_watch, name="dvcflow-terminal", daemon=True)]
            _WATCHER[0].start()


def unwatch(leader: int) -> bool:
    """Stop watching group `leader` (it has ended): True when it was lent the terminal, so a Ctrl-C typed
    there may have ended it."""
    with _LOCK:
        watched = _WATCHED.pop(leader, None)
        if watched is None:
            return False
        held = watched.lent_at is not None
        if held:
            _give_back(watched)
        if watched.modes is not None:
            _restore_modes(watched)
        return watched.was_lent


def _terminal() -> int | None:
    """The controlling terminal's descriptor (called with `_LOCK` held)."""
    if not sys.platform.startswith("linux"):
        return None
    if not _TTY:
        try:
            _TTY.append(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
            atexit.register(_give_back_at_exit)
        except OSError:  # no controlling terminal
            _TTY.append(-1)
    return _TTY[0] if _TTY[0] >= 0 else None


def _watch() -> None:
    with _ttou_blocked():  # this thread takes the terminal back from the background
        while True:
            time.sleep(POLL_S)
            with _LOCK:
                if not _WATCHED:
                    _WATCHER.clear()
                    return
                lent = next(((group, w) for group, w in _WATCHED.items() if w.lent_at is not None), None)
                if lent is not None:
                    group, watched = lent
                    if _stopped_by(group) is not None:  # stopped again at the next touch: go on
                        _continue(group, watched)
                    elif time.monotonic() - (watched.lent_at or 0.0) >= SETTLE_S:
                        _give_back(watched)
                    continue
                for group, watched in sorted(_WATCHED.items()):
                    if _stopped_by(group) in (signal.SIGTTIN, signal.SIGTTOU):
                        _lend(group, watched)
                        break


def _lend(group: int, watched: _Watched) -> None:
    fd = _TTY[0]
    try:
        if os.tcgetpgrp(fd) != os.getpgrp():  # dvcflow is in the background: not ours to lend
            return
        if watched.modes is None:
            watched.modes = termios.tcgetattr(fd)
        os.tcsetpgrp(fd, group)
    except (OSError, termios.error):
        return
    watched.was_lent = True
    _continue(group, watched)


def _continue(group: int, watched: _Watched) -> None:
    watched.lent_at = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGCONT)


def _give_back(watched: _Watched) -> None:
    """The terminal to dvcflow's group again (called with `_LOCK` held, from any thread)."""
    watched.lent_at = None
    with _ttou_blocked(), contextlib.suppress(OSError, termios.error):
        watched.left = termios.tcgetattr(_TTY[0])
        os.tcsetpgrp(_TTY[0], os.getpgrp())


def _restore_modes(watched: _Watched) -> None:
    """The modes from before `watched` was first lent the terminal, if they are still as it left them:
    another prompt that changed them since (its echo off while it reads a password) keeps its own."""
    with _ttou_blocked(), contextlib.suppress(OSError, termios.error):
        now, before = termios.tcgetattr(_TTY[0]), watched.modes
        if before is not None and now != before and now == watched.left:
            termios.tcsetattr(_TTY[0], termios.TCSANOW, before)


def _give_back_at_exit() -> None:
    with _LOCK:
        for watched in _WATCHED.values():
            if watched.lent_at is not None:
                _give_back(watched)


@contextlib.contextmanager
def _ttou_blocked() -> Iterator[None]:
    """A process in the terminal's background may set its foreground group only with SIGTTOU blocked."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _stopped_by(leader: int) -> int | None:
    """The signal that stopped process `leader` (a child of this process), or None while it runs."""
    try:
        with open(f"/proc/{leader}/stat", "rb") as stat:
            if stat.read().rpartition(b")")[2].split()[0] != b"T":
                return None
        info = os.waitid(os.P_PID, leader, os.WSTOPPED | os.WNOHANG | os.WNOWAIT)
    except (OSError, IndexError):
        return None
    return info.si_status if info is not None else None
