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
  lost after `MISSES` failures in a row (a refused or timed-out connection, not an HTTP answer).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

CHECK_EVERY_S = 2.0
MISSES = 3  # of a remote API's health checks in a row: lost within ~10 s (2 s apart, 2 s timeout each)


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
    while not done.wait(CHECK_EVERY_S):
        reason = _unhealthy(api_url)
        misses = misses + 1 if reason else 0
        if reason and misses >= MISSES and not done.is_set():
            on_lost(reason)
            return


def _unhealthy(api_url: str) -> str | None:
    """Why the API does not answer, or None when it does (any HTTP answer is an answer)."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=CHECK_EVERY_S):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as err:
        return str(getattr(err, "reason", err))
