"""The Prefect API going away mid-run ends the command within seconds, not a minute later.

Without this, a run whose server was killed (or stopped) went on until its next API call, which Prefect's
client retried for ~40 s, while its log and event workers printed `--- Error logging to API ---` and
`EventsWorker failed ...`: exit 4 came 46-54 s after the server died. Nothing can be recorded once the API is
gone, so nothing is lost by ending at once: `lost_api_ends_the_run` watches the API for the length of the
run and, when it is gone, calls `on_lost` with the reason (the caller stops the stage commands and exits).

How it knows, in a daemon thread that costs nothing while it waits:
- dvcflow's local server: a pidfd of the server process, readable the moment it exits (SIGKILL, `dvcflow
  server stop`);
- any other API (`PREFECT_API_URL`, the server of another machine): its `/health`, every `CHECK_EVERY_S`,
  lost after `MISSES` failures in a row (a refused connection, an unknown host, a reset: not an HTTP
  answer). A check that times out is a busy server, not a lost one: it counts only once no check was
  answered for `SILENT_S` (a machine gone from the network, whose packets are dropped).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

CHECK_EVERY_S = 2.0
MISSES = 3  # of a remote API's health checks in a row that fail at once: lost within ~6 s (2 s apart)
HEALTH_TIMEOUT_S = 10.0  # for one check: a server busy with the run's own writes may take seconds
SILENT_S = 120.0  # without an answer, checks timing out: then lost too (Prefect's client gives up sooner)


@contextlib.contextmanager
def lost_api_ends_the_run(
    api_url: str | None, server_pid: int | None, on_lost: Callable[[str], None]
) -> Iterator[None]:
    """For the block: `on_lost(reason)` (in a thread) once the API at `api_url` is gone, the process
    `server_pid` (dvcflow's local server) watched when given. Nothing without an API."""
    if not api_url:
        yield
        return
    done = threading.Event()
    watch = _watch_process if server_pid is not None else _watch_health
    target = server_pid if server_pid is not None else api_url
    thread = threading.Thread(
        target=watch, args=(target, done, on_lost), name="dvcflow-api-watch", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        done.set()


def _watch_process(pid: object, done: threading.Event, on_lost: Callable[[str], None]) -> None:
    assert isinstance(pid, int)
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        on_lost(f"its server process {pid} has ended")
        return
    except OSError:  # no pidfds (a kernel before 5.3): ask the API instead
        return
    try:
        while not done.is_set():
            readable, _, _ = select.select([handle], [], [], CHECK_EVERY_S)
            if readable and not done.is_set():
                on_lost(f"its server process {pid} has ended")
                return
    finally:
        os.close(handle)


def _watch_health(api_url: object, done: threading.Event, on_lost: Callable[[str], None]) -> None:
    assert isinstance(api_url, str)
    misses = 0
    answered = time.monotonic()
    while not done.wait(CHECK_EVERY_S):
        reason, slow = _unhealthy(api_url)
        if reason is None:
            misses, answered = 0, time.monotonic()
            continue
        misses = 0 if slow else misses + 1  # a timeout is no miss: the server may only be busy
        silent = time.monotonic() - answered
        if (misses >= MISSES or silent >= SILENT_S) and not done.is_set():
            on_lost(reason if misses >= MISSES else f"no answer for {silent:.0f} s ({reason})")
            return


def _unhealthy(api_url: str) -> tuple[str | None, bool]:
    """Why the API does not answer (None when it does: any HTTP answer is an answer), and whether it was
    only slow (the check timed out)."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S):
            return None, False
    except urllib.error.HTTPError:
        return None, False
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return str(reason), isinstance(reason, TimeoutError) or isinstance(err, TimeoutError)
