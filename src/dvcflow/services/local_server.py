"""`dvcflow server stop` as a library call: the runs still going on the server are ended first.

Starting the server and its status are `dvcflow.server.control` alone; stopping it also involves the
flow runs on it (`dvcflow.api.crash.end_live_runs`), which the server layer below the API cannot know of.
"""

from __future__ import annotations

from collections.abc import Callable

from dvcflow.core.settings import ServerConfig


def stop_server(config: ServerConfig, announce: Callable[[str], None] = lambda _: None) -> int | None:
    """Stop the server dvcflow started (by its recorded pid) and wait until it is gone; the pid stopped,
    or None when none was running.

    A dvcflow command still running a flow run on it is told to end first, as a Ctrl-C would (its run is
    recorded Crashed while the server answers, it exits 130), and waited for up to 30 s (docs/server.md)."""
    from dvcflow.api.crash import end_live_runs
    from dvcflow.server import control

    if control.recorded_pid(config) is not None:
        end_live_runs(config.api_url, announce=announce)
    return control.stop(config)
