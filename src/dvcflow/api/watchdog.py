"""A killed dvcflow run becomes Crashed at once, without waiting for the next run in that repository.

`watching()` starts `python -m dvcflow.api.watchdog` in its own session (so Ctrl-C and a killed process
group do not reach it), its stdin the read end of a pipe only dvcflow holds open. The watchdog blocks on
that pipe, costing nothing while the run goes on:

- dvcflow finished normally: it writes `done` and closes the pipe; the watchdog exits without a request.
- dvcflow died (SIGKILL, OOM killer, a crash of the interpreter): the kernel closes the pipe; the watchdog
  asks the Prefect API for the still Running/Pending flow runs tagged with this repository, host and
  process (`dvcflow.api.tags.run_tags`), and sets them, and their unfinished task runs, to Crashed
  (`dvcflow.api.crash`, the one way dvcflow marks a run Crashed).

Why not Prefect's heartbeats: zombie detection needs an automation on the server (a proactive trigger
on missing `prefect.flow-run.heartbeat` events, 30 s heartbeats at best, so a minute or more to notice),
and the heartbeat thread costs 0-1 s at the end of every flow run. What this cannot see is a host that
dies with its run (power loss): heartbeats would; the next run of the repository then does
(`dvcflow.api.crash.crash_orphaned_runs`). Standard library only, so the watchdog starts in ~20 ms.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence

from dvcflow.api.crash import crash_runs, http_post

DONE = b"done\n"
# Its API may be gone with the run (the server killed or stopped mid-run: the run then ended with exit 4):
# the watchdog waits for it to be back (dvcflow's next command starts the local server again) and marks
# the run Crashed then, polling a refused port at most every `MAX_DELAY_S`; bounded, the watchdog must end:
# after an hour it gives up (a server gone for good must not leave a process polling for a day), and the next
# run of the repository marks the run Crashed instead (`crash.crash_orphaned_runs`).
PATIENCE_S = 3600.0
MAX_DELAY_S = 5.0


@contextlib.contextmanager
def watching(api_url: str | None, tags: Sequence[str]) -> Iterator[None]:
    """Watch this process for the duration of the block; without an API (a temporary server) do nothing."""
    if not api_url:
        yield
        return
    read_end, write_end = os.pipe()
    try:
        subprocess.Popen(
            [sys.executable, "-m", "dvcflow.api.watchdog", api_url, *tags],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except OSError:  # no watchdog is no reason to refuse a run; the next run still sweeps
        os.close(write_end)
        yield
        return
    finally:
        os.close(read_end)
    finished = False
    try:
        yield
        finished = True
    finally:
        with contextlib.suppress(OSError):
            if finished:
                os.write(write_end, DONE)
        os.close(write_end)


def main(argv: Sequence[str]) -> int:
    import signal
    import time

    for number in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    api_url, tags = argv[0], argv[1:]
    if sys.stdin.buffer.read() == DONE:  # returns at EOF: when dvcflow has closed the pipe or died
        return 0
    import urllib.error

    message = "its dvcflow process ended without finishing the run (killed?); marked by dvcflow's watchdog"
    deadline, delay = time.monotonic() + PATIENCE_S, 0.5
    while True:
        try:
            crash_runs(http_post(api_url), tags, lambda _run: message)
            return 0
        except urllib.error.HTTPError as err:  # an answer: only a server error is worth another try
            if err.code < 500:
                return 1
        except OSError:  # not answering (yet): the server is gone or restarting
            pass
        if time.monotonic() > deadline:
            return 1
        time.sleep(delay)
        delay = min(delay * 2, MAX_DELAY_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
