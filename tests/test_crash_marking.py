"""`dvcflow.api.crash.crash_runs`, the one way dvcflow marks runs Crashed (the watchdog and the next run's
sweep both use it), against a recorded stand-in for the Prefect API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dvcflow.api.crash import crash_runs

TAGS = ["dvcflow-repo:abc", "dvcflow-host:h"]


class FakeApi:
    def __init__(self, runs: list[dict[str, Any]], tasks: dict[str, list[str]]) -> None:
        self.runs, self.tasks = runs, tasks
        self.posted: list[tuple[str, Any]] = []

    def post(self, path: str, body: object) -> Any:
        self.posted.append((path, body))
        if path == "/flow_runs/filter":
            return self.runs
        if path == "/task_runs/filter":
            assert isinstance(body, dict)
            (run_id,) = body["flow_runs"]["id"]["any_"]
            return [{"id": task} for task in self.tasks.get(run_id, [])]
        return None


def test_runs_and_their_unfinished_task_runs_are_set_crashed_with_the_reason() -> None:
    api = FakeApi([{"id": "r1", "tags": TAGS}], {"r1": ["t1", "t2"]})
    assert crash_runs(api.post, TAGS, lambda run: f"gone: {run['id']}") == 1
    paths = [path for path, _ in api.posted]
    assert paths == [
        "/flow_runs/filter",
        "/task_runs/filter",
        "/task_runs/t1/set_state",
        "/task_runs/t2/set_state",
        "/flow_runs/r1/set_state",
    ]
    unfinished = {"type": {"any_": ["RUNNING", "PENDING"]}}
    assert api.posted[0][1] == {"flow_runs": {"tags": {"all_": TAGS}, "state": unfinished}}
    assert api.posted[1][1] == {"flow_runs": {"id": {"any_": ["r1"]}}, "task_runs": {"state": unfinished}}
    crashed = {"state": {"type": "CRASHED", "name": "Crashed", "message": "gone: r1"}, "force": True}
    assert all(body == crashed for _, body in api.posted[2:])


def test_a_run_without_a_reason_is_left_alone() -> None:
    api = FakeApi([{"id": "alive"}, {"id": "dead"}], {"alive": ["t1"], "dead": []})

    def reason(run: Mapping[str, Any]) -> str | None:
        return "gone" if run["id"] == "dead" else None

    assert crash_runs(api.post, TAGS, reason) == 1
    assert [path for path, _ in api.posted] == [
        "/flow_runs/filter",
        "/task_runs/filter",
        "/flow_runs/dead/set_state",
    ]


def test_an_answer_that_is_not_a_list_crashes_nothing() -> None:
    api = FakeApi([], {})
    api.runs = {"detail": "nope"}  # type: ignore[assignment]
    assert crash_runs(api.post, TAGS, lambda _run: "gone") == 0
    assert [path for path, _ in api.posted] == ["/flow_runs/filter"]


def test_server_stop_tells_only_dvcflow_commands_to_end_never_its_own_lineage() -> None:
    """`server stop` SIGINTs the commands running flow runs on the server: a user's own process (the
    Python API) is not one of them, and neither is the process that runs `server stop` or any above it
    (a test runner whose in-process run was left unfinished was interrupted by its own server's stop)."""
    import os

    from dvcflow.api.crash import _is_dvcflow_command
    from dvcflow.proc.children import lineage

    assert _is_dvcflow_command(["/venv/bin/python", "/venv/bin/dvcflow", "run-b"])
    assert _is_dvcflow_command(["/venv/bin/python", "-m", "dvcflow.cli.warm", "/home", "42"])
    assert not _is_dvcflow_command(["python", "nightly.py"])
    assert not _is_dvcflow_command(None)
    assert {os.getpid(), os.getppid()} <= lineage()
