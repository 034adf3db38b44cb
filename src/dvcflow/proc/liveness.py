"""Which host and process run a flow run, and whether that process still lives: what the crash sweep
(`dvcflow.api.crash.crash_orphaned_runs`) asks of a run's tags.

A process is named by its pid plus, on Linux, its start time in clock ticks since boot, so a pid reused by
another program after a crash does not look like the run's process: `4242.1234567`.

The start time is read from `/proc/PID/stat` by hand, not with psutil (which `dvcflow.proc.children`
uses): psutil gives it only as seconds since the epoch, computed from the boot time, which moves when the
system clock is set. The tick count never changes, so a token written into a run's tags by one process
(or an earlier dvcflow) compares equal in another one, days later.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from pathlib import Path

_MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


@functools.cache
def host_id() -> str:
    """`<hostname>` plus 8 hex of the machine id when there is one: two hosts both called `localhost`
    (or two containers) are still told apart when their machine ids differ."""
    name = re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname()) or "host"
    for path in _MACHINE_ID_FILES:
        try:
            machine = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if machine:
            return f"{name}-{machine[:8]}"
    return name


def _start_ticks(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # Field 22 (starttime); the command name in field 2 may hold spaces and parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def process_token(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    ticks = _start_ticks(pid)
    return f"{pid}.{ticks}" if ticks else str(pid)


def alive(token: str) -> bool:
    """Whether the process `token` names (on this host) still runs."""
    pid_text, _, ticks = token.partition(".")
    try:
        pid = int(pid_text)
    except ValueError:
        return True  # not ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return not ticks or _start_ticks(pid) in (ticks, None)
