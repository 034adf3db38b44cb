"""The watchdog's protocol against a fake Prefect API (the real one: tests/test_faults.py, SIGKILL)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dvcflow.api.watchdog import DONE
from tests.conftest import integration_fixture

TAGS = ["dvcflow-repo:abc", "dvcflow-host:h", "dvcflow-pid:1.2"]


class FakeApi(ThreadingHTTPServer):
    requests: list[tuple[str, object, str | None]]


class Handler(BaseHTTPRequestHandler):
    server: FakeApi

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body, self.headers.get("Authorization")))
        answer: object = {}
        if self.path.endswith("/flow_runs/filter"):
            answer = [{"id": "run-1"}]
        elif self.path.endswith("/task_runs/filter"):
            answer = [{"id": "task-1"}]
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@integration_fixture  # a server, and each test runs the watchdog as a process
def api() -> Iterator[FakeApi]:
    server = FakeApi(("127.0.0.1", 0), Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def watchdog(api: FakeApi, stdin: bytes) -> int:
    url = f"http://127.0.0.1:{api.server_address[1]}/api"
    env = {"PREFECT_API_AUTH_STRING": "u:p", "PATH": ""}
    return subprocess.run(
        [sys.executable, "-m", "dvcflow.api.watchdog", url, *TAGS], input=stdin, env=env, timeout=60
    ).returncode


def test_done_means_no_request(api: FakeApi) -> None:
    assert watchdog(api, DONE) == 0
    assert api.requests == []


def test_a_closed_pipe_without_done_crashes_the_runs_and_their_task_runs(api: FakeApi) -> None:
    assert watchdog(api, b"") == 0
    paths = [path for path, _, _ in api.requests]
    assert paths == [
        "/api/flow_runs/filter",
        "/api/task_runs/filter",
        "/api/task_runs/task-1/set_state",
        "/api/flow_runs/run-1/set_state",
    ]
    unfinished = {"type": {"any_": ["RUNNING", "PENDING"]}}
    assert api.requests[0][1] == {"flow_runs": {"tags": {"all_": TAGS}, "state": unfinished}}
    crashed = api.requests[3][1]
    assert isinstance(crashed, dict) and crashed["state"]["type"] == "CRASHED" and crashed["force"] is True
    assert {auth for _, _, auth in api.requests} == {"Basic dTpw"}  # base64 of u:p


def test_a_watchdog_waits_for_a_gone_server_an_hour_at_most() -> None:
    """A server gone for good must not leave a watchdog polling for a day (the next run marks the run)."""
    from dvcflow.api.watchdog import PATIENCE_S

    assert PATIENCE_S <= 3600
