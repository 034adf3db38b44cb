"""Which unfinished flow runs the next run marks Crashed: only those of this host whose process is gone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dvcflow.api.tags import HOST_TAG, PID_TAG, repo_tag
from dvcflow.proc import liveness
from tests.conftest import LiveServer, Processes
from tests.helpers import api_post, make_tiny_repo


def dead_process_token(processes: Processes) -> str:
    child = processes.start([sys.executable, "-c", "pass"])
    token = liveness.process_token(child.pid)
    child.wait()
    return token


def running_flow_run(api_url: str, flow_id: str, tags: list[str]) -> str:
    run = api_post(api_url, "/flow_runs/", {"flow_id": flow_id, "tags": tags, "state": {"type": "RUNNING"}})
    assert isinstance(run, dict)
    return str(run["id"])


def test_only_runs_of_this_host_with_a_dead_process_are_crashed(
    tmp_path: Path, live_server: LiveServer, processes: Processes
) -> None:
    api_url = live_server.api_url
    repo = make_tiny_repo(tmp_path / "repo", live_server.env)
    flow = api_post(api_url, "/flows/", {"name": "crash sweep probe"})
    assert isinstance(flow, dict)
    here, dead = f"{HOST_TAG}{liveness.host_id()}", f"{PID_TAG}{dead_process_token(processes)}"
    ghost = running_flow_run(api_url, flow["id"], [repo_tag(repo), here, dead])
    elsewhere = running_flow_run(api_url, flow["id"], [repo_tag(repo), f"{HOST_TAG}other-machine", dead])
    alive = running_flow_run(
        api_url, flow["id"], [repo_tag(repo), here, f"{PID_TAG}{liveness.process_token()}"]
    )
    untagged = running_flow_run(api_url, flow["id"], [repo_tag(repo)])  # an older dvcflow's run

    sweep = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from dvcflow.api.crash import crash_orphaned_runs;"
            "print(crash_orphaned_runs(Path(sys.argv[1])))",
            str(repo),
        ],
        env={**live_server.env, "PREFECT_API_URL": api_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sweep.stdout.strip() == "1", sweep.stderr
    runs = api_post(
        api_url, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [ghost, elsewhere, alive, untagged]}}}
    )
    assert isinstance(runs, list)
    states = {run["id"]: run["state_name"] for run in runs}
    assert states == {ghost: "Crashed", elsewhere: "Running", alive: "Running", untagged: "Running"}


def test_liveness_tells_a_reused_pid_from_the_original_process(processes: Processes) -> None:
    token = liveness.process_token()
    pid, _, ticks = token.partition(".")
    assert liveness.alive(token)
    assert not liveness.alive(dead_process_token(processes))
    if ticks:  # Linux: the start time is part of the token
        assert not liveness.alive(f"{pid}.{int(ticks) + 1}")
