"""`dvcflow server`: real server processes on free ports, read back through Prefect's REST API."""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dvcflow.proc import zygote
from tests.conftest import Processes, integration_fixture
from tests.helpers import api_post, base_env, dvcflow, free_port, make_tiny_repo


def server_env(home: Path, port: int) -> dict[str, str]:
    env = base_env(home)
    env.update(DVCFLOW_HOME=str(home), DVCFLOW_PORT=str(port))
    return env


@dataclass(frozen=True)
class OwnServer:
    home: Path
    port: int
    env: dict[str, str]


@integration_fixture
def own_server(tmp_path: Path) -> Iterator[OwnServer]:
    """A home and a free port for a dvcflow server of the test's own (not the session's): whatever server
    the test starts there is stopped at its end, also when the test failed before stopping it."""
    home, port = tmp_path / "home", free_port()
    env = server_env(home, port)
    try:
        yield OwnServer(home, port, env)
    finally:
        if (home / "server.pid").exists():
            dvcflow("server", "stop", cwd=tmp_path, env=env, timeout=60)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def read_flow_run(api_url: str, flow_run_id: str, auth: str | None = None) -> dict[str, object]:
    runs = api_post(api_url, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}}, auth)
    assert isinstance(runs, list) and len(runs) == 1
    return runs[0]


def run_link_id(output: str) -> str:
    match = re.search(r"/runs/flow-run/([0-9a-f-]{36})", output)
    assert match, output
    return match.group(1)


def test_lifecycle_with_auth(tmp_path: Path, own_server: OwnServer) -> None:
    home, port, env = own_server.home, own_server.port, own_server.env
    secret = "alice:s3cret-pass"

    started = dvcflow("server", "start", "--auth", secret, cwd=tmp_path, env=env)
    assert started.returncode == 0, started.stderr
    assert f"Started Prefect server at http://127.0.0.1:{port}" in started.stdout
    assert re.search(r"Warm starter  (starting|ready) \(pid \d+\)", started.stdout), started.stdout

    again = dvcflow("server", "start", "--auth", secret, cwd=tmp_path, env=env)
    assert again.returncode == 0
    assert f"Already running at http://127.0.0.1:{port}" in again.stdout

    status = dvcflow("server", "status", "--json", cwd=tmp_path, env=env)
    info = json.loads(status.stdout)
    assert info["running"] is True and info["prefect_version"].startswith("3.")
    assert info["database"] == str(home / "prefect" / "prefect.db")
    pid = info["pid"]
    assert pid_alive(pid)
    starter = zygote.ping(home)  # the warm starter started with the server (`dvcflow.cli.warm`)
    assert starter is not None and pid_alive(starter)
    shown = json.loads(dvcflow("server", "status", "--json", cwd=tmp_path, env=env).stdout)
    assert shown["warm_starter"] == {"pid": starter, "ready": True}
    assert f"Warm starter  ready (pid {starter})" in dvcflow("server", "status", cwd=tmp_path, env=env).stdout
    assert "s3cret" not in status.stdout

    api_url = f"http://127.0.0.1:{port}/api"
    with pytest.raises(urllib.error.HTTPError) as refused:
        api_post(api_url, "/flow_runs/filter", {})
    assert refused.value.code == 401

    exported = dvcflow("server", "env", cwd=tmp_path, env=env).stdout
    assert f"export PREFECT_API_URL={api_url}" in exported

    # A dvcflow run on any DVC repo uses this server, with the credentials, and its link stays valid.
    repo = make_tiny_repo(tmp_path / "repo", env)
    run = dvcflow("run-a", cwd=repo, env={**env, "DVCFLOW_AUTH": secret})
    assert run.returncode == 0, run.stderr
    assert f"Prefect API: {api_url} (dvcflow local server)" in run.stderr
    assert "Started dvcflow's local Prefect server" not in run.stderr
    flow_run = read_flow_run(api_url, run_link_id(run.stdout), auth=secret)
    assert flow_run["state_name"] == "Completed"
    assert (repo / "out.txt").read_text() == "hello"
    assert "s3cret" not in (home / "server.log").read_text()

    stopped = dvcflow("server", "stop", cwd=tmp_path, env=env)
    assert stopped.stdout.strip() == f"Stopped server (pid {pid})."
    assert not pid_alive(pid)
    assert not pid_alive(starter) and not zygote.socket_path(home).exists()
    assert json.loads(dvcflow("server", "status", "--json", cwd=tmp_path, env=env).stdout)["running"] is False

    twice = dvcflow("server", "stop", cwd=tmp_path, env=env)
    assert twice.returncode == 0
    assert twice.stdout.strip() == "No dvcflow server was running."


def test_first_run_starts_the_local_server_and_its_link_outlives_the_run(
    tmp_path: Path, own_server: OwnServer
) -> None:
    port, env = own_server.port, own_server.env
    repo = make_tiny_repo(tmp_path / "repo", env)
    run = dvcflow("run-a", cwd=repo, env=env)
    assert run.returncode == 0, run.stderr
    assert f"Started dvcflow's local Prefect server at http://127.0.0.1:{port}" in run.stderr
    assert "dvcflow server stop" in run.stderr
    assert "telemetry" not in run.stderr.lower()
    flow_run = read_flow_run(f"http://127.0.0.1:{port}/api", run_link_id(run.stdout))
    assert flow_run["state_name"] == "Completed"


def test_ephemeral_opt_out_uses_a_temporary_server(tmp_path: Path, own_server: OwnServer) -> None:
    home, env = own_server.home, {**own_server.env, "DVCFLOW_EPHEMERAL": "1"}
    repo = make_tiny_repo(tmp_path / "repo", env)
    run = dvcflow("run-a", cwd=repo, env=env)
    assert run.returncode == 0, run.stderr
    assert "Prefect API: a temporary server for this run only" in run.stderr
    assert "View it in the Prefect UI" not in run.stdout  # a dead link is not printed
    assert not (home / "server.pid").exists()
    assert "telemetry" not in run.stderr.lower()


def test_port_taken_by_another_program(tmp_path: Path, processes: Processes) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = processes.dvcflow("server", "start", cwd=tmp_path, env=server_env(tmp_path / "home", port))
    assert result.returncode == 4
    assert result.stderr.splitlines()[0] == f"Error: port {port} on 127.0.0.1 is taken by another program"


def test_unhealthy_start_reports_the_log_and_leaves_nothing_running(
    tmp_path: Path, own_server: OwnServer
) -> None:
    env = own_server.env
    began = time.monotonic()
    result = dvcflow("server", "start", "--timeout", "0.5", cwd=tmp_path, env=env)
    assert result.returncode == 4
    assert "was not healthy within 0.5 s" in result.stderr
    assert "last lines of" in result.stderr
    assert time.monotonic() - began < 30
    status = json.loads(dvcflow("server", "status", "--json", cwd=tmp_path, env=env).stdout)
    assert status["running"] is False and status["pid"] is None


def test_non_loopback_host_requires_auth(tmp_path: Path, processes: Processes) -> None:
    result = processes.dvcflow(
        "server", "start", "--host", "0.0.0.0", cwd=tmp_path, env=server_env(tmp_path, 1)
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "Error: refusing to serve on non-loopback host 0.0.0.0 without --auth USER:PASS"
    )


def test_unreachable_api_url_fails_fast(tmp_path: Path, closed_port: int) -> None:
    env = base_env(tmp_path)
    api_url = f"http://127.0.0.1:{closed_port}/api"
    env["PREFECT_API_URL"] = api_url
    repo = make_tiny_repo(tmp_path / "repo", env)
    began = time.monotonic()
    result = dvcflow("run-a", cwd=repo, env=env)
    assert time.monotonic() - began < 10
    assert result.returncode == 4
    assert result.stderr.splitlines()[0].startswith(f"Error: the Prefect API at {api_url} is unreachable")
    assert not (repo / "out.txt").exists()


POSTGRES_URL = os.environ.get("DVCFLOW_TEST_POSTGRES_URL", "")
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")


@pytest.mark.skipif(
    not POSTGRES_URL and not IN_CI,
    reason="no PostgreSQL: DVCFLOW_TEST_POSTGRES_URL unset (.ci/run starts one: scripts/ci-postgres.sh)",
)
def test_server_on_postgresql(tmp_path: Path, own_server: OwnServer) -> None:
    assert POSTGRES_URL, "CI=true and no PostgreSQL: DVCFLOW_TEST_POSTGRES_URL unset (run CI through .ci/run)"
    port, env = own_server.port, dict(own_server.env)
    password = POSTGRES_URL.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    started = dvcflow("server", "start", "--database-url", POSTGRES_URL, cwd=tmp_path, env=env)
    assert started.returncode == 0, started.stderr
    assert password not in started.stdout
    assert "postgresql+asyncpg://dvcflow:***@" in started.stdout
    env["DVCFLOW_DATABASE_URL"] = POSTGRES_URL
    repo = make_tiny_repo(tmp_path / "repo", env)
    run = dvcflow("run-a", cwd=repo, env=env)
    assert run.returncode == 0, run.stderr
    flow_run = read_flow_run(f"http://127.0.0.1:{port}/api", run_link_id(run.stdout))
    assert flow_run["state_name"] == "Completed"
