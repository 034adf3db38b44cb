"""Marking flow runs Crashed, one way for both who do it.

A dvcflow process that dies mid-run leaves its flow run Running forever: nothing in Prefect ends it
without heartbeats (see `dvcflow.api.watchdog` for why dvcflow keeps them off). Two places notice:
the run's own watchdog, the moment its process dies, and the next run of the same repository, for a
process that died with no watchdog to act (the machine went down with it). Both find the unfinished
flow runs carrying given tags (`dvcflow.api.tags`) and set them, and their unfinished task runs,
Crashed, with `crash_runs`: the same requests, the same states.

What differs is only how a request travels. The watchdog must start in ~20 ms, so this module imports
nothing but the standard library, and the watchdog posts with `urllib` (`http_post`). The next run has
Prefect's client at hand, which also reaches `--ephemeral`'s temporary server and knows the credentials
of a Prefect profile; `crash_orphaned_runs` sends the same requests through it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

Post = Callable[[str, object], Any]
"""POST a JSON body to a path of the Prefect API (`/flow_runs/filter`); the JSON answer."""

UNFINISHED = ["RUNNING", "PENDING"]
TIMEOUT_S = 10.0  # for one request of `http_post`


def crash_runs(post: Post, tags: Sequence[str], reason: Callable[[Mapping[str, Any]], str | None]) -> int:
    """Set the unfinished flow runs that carry every one of `tags` Crashed, and their unfinished task
    runs: each run for which `reason` (given the run as the API returns it) has a message, which the
    Crashed states carry. The count of flow runs set Crashed."""
    state = {"type": {"any_": UNFINISHED}}
    runs = post("/flow_runs/filter", {"flow_runs": {"tags": {"all_": list(tags)}, "state": state}})
    count = 0
    for run in runs if isinstance(runs, list) else []:
        message = reason(run)
        if message is None:
            continue
        run_id = run["id"]
        tasks = post(
            "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}, "task_runs": {"state": state}}
        )
        for task in tasks if isinstance(tasks, list) else []:
            post(f"/task_runs/{task['id']}/set_state", _crashed(message))
        post(f"/flow_runs/{run_id}/set_state", _crashed(message))
        count += 1
    return count


def _crashed(message: str) -> dict[str, object]:
    return {"state": {"type": "CRASHED", "name": "Crashed", "message": message}, "force": True}


def http_post(api_url: str) -> Post:
    """`Post` over plain HTTP to the API at `api_url`, with the credentials `PREFECT_API_KEY` or
    `PREFECT_API_AUTH_STRING` in the environment (standard library only)."""

    def post(path: str, body: object) -> Any:
        import base64
        import json
        import urllib.request

        headers = {"Content-Type": "application/json"}
        if os.environ.get("PREFECT_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['PREFECT_API_KEY']}"
        elif os.environ.get("PREFECT_API_AUTH_STRING"):
            token = base64.b64encode(os.environ["PREFECT_API_AUTH_STRING"].encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        request = urllib.request.Request(
            f"{api_url.rstrip('/')}{path}", data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            text = response.read()
        return json.loads(text) if text else None

    return post


def crash_orphaned_runs(repo_root: Path) -> int:
    """Set this repository's unfinished flow runs Crashed when they ran on this host and their process
    is gone. A run of another host (same repository on a shared server) is never touched."""
    from prefect.client.orchestration import get_client

    from dvcflow.api.tags import HOST_TAG, PID_TAG, repo_tag, tag_value
    from dvcflow.proc import liveness

    here = liveness.host_id()

    def orphaned(run: Mapping[str, Any]) -> str | None:
        token = tag_value(run.get("tags") or [], PID_TAG)
        if token is None or liveness.alive(token):
            return None
        return f"its dvcflow process ({token} on {here}) is gone; found by the next run"

    try:
        with get_client(sync_client=True) as client:

            def post(path: str, body: object) -> Any:
                return client.request("POST", path, json=body).json()  # type: ignore[arg-type]

            return crash_runs(post, [repo_tag(repo_root), f"{HOST_TAG}{here}"], orphaned)
    except Exception:  # housekeeping only: never the reason a run does not start
        return 0


STOP_WAIT_S = 30.0  # for the runs `end_live_runs` told to end, before the server is stopped under them


def end_live_runs(api_url: str, announce: Callable[[str], None], wait: float = STOP_WAIT_S) -> int:
    """Before dvcflow's local server stops: tell each dvcflow command of this host still running a flow
    run on it to end, as a Ctrl-C does (its stage commands stopped, the run recorded Crashed while the
    server still answers, exit 130), and wait up to `wait` s for them. Without this, each would lose its
    API mid-run (exit 4, the run Running until the server is back). The count of commands told."""
    import signal
    import time

    from dvcflow.api.tags import HOST_TAG, PID_TAG, tag_value
    from dvcflow.proc import liveness
    from dvcflow.proc.children import command_line, lineage, running

    state = {"type": {"any_": UNFINISHED}}
    host = {"tags": {"all_": [f"{HOST_TAG}{liveness.host_id()}"]}, "state": state}
    try:
        runs = http_post(api_url)("/flow_runs/filter", {"flow_runs": host})
    except (OSError, ValueError):
        return 0  # not answering: nothing can be recorded anyway
    told: list[int] = []
    for run in runs if isinstance(runs, list) else []:
        token = tag_value(run.get("tags") or [], PID_TAG)
        if token is None or not liveness.alive(token):
            continue
        pid = int(token.partition(".")[0])
        if pid in lineage():  # this process, or one that started it (a script, a test runner): never
            continue
        if not _is_dvcflow_command(command_line(pid)):  # a user's own process (the Python API): theirs
            announce(
                f"Flow run {run.get('name')!r} is running on this server in a process that is not a "
                f"dvcflow command (pid {pid}): stopping the server under it"
            )
            continue
        announce(
            f"A dvcflow command is running flow run {run.get('name')!r} on this server (pid {pid}): "
            "telling it to end (as Ctrl-C), then stopping the server"
        )
        try:
            os.kill(pid, signal.SIGINT)
        except OSError:
            continue
        told.append(pid)
    deadline = time.monotonic() + wait
    # A command that ended but whose parent has not reaped it yet (a zombie) has ended: not waited for.
    while time.monotonic() < deadline and any(running(pid) for pid in told):
        time.sleep(0.1)
    return len(told)


def _is_dvcflow_command(argv: list[str] | None) -> bool:
    """A `dvcflow` console script, `python -m dvcflow ...`, or a child of the warm starter (whose command
    line stays the starter's): the processes `server stop` may tell to end as a Ctrl-C would."""
    return argv is not None and any("dvcflow" in part for part in argv[:3])
