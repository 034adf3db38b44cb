"""The run read-back's own logic (`dvcflow.api.execution`, `dvcflow.api.tags`), without a server: which tags
task runs inherit, the summary's order."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

from dvcflow.api import execution
from dvcflow.api.execution import untagged_tasks
from dvcflow.api.tags import HOST_TAG, PID_TAG, REPO_TAG


def test_task_runs_keep_a_users_tags_but_not_dvcflows_identity_tags() -> None:
    """A task run's tags are Prefect's current tags when it is submitted: a user's `prefect.tags(...)`
    around a run must still reach the stage tasks (tag concurrency limits, filters), while the flow run's
    repository/host/process tags must not (each tag costs a concurrency-slot write per task run)."""
    from prefect import tags
    from prefect.context import TagsContext

    identity = {f"{REPO_TAG}abc", f"{HOST_TAG}h1", f"{PID_TAG}42"}
    with tags("team-ml", "gpu"), tags(*identity):
        assert TagsContext.get().current_tags == identity | {"team-ml", "gpu"}  # what the flow run gets
        with untagged_tasks():
            assert TagsContext.get().current_tags == {"team-ml", "gpu"}
        assert TagsContext.get().current_tags == identity | {"team-ml", "gpu"}


def _run(name: str, second: int) -> Any:
    state = SimpleNamespace(timestamp=datetime(2026, 1, 1, 0, 0, 59, tzinfo=UTC), is_final=lambda: True)
    return SimpleNamespace(
        id=uuid4(), name=name, expected_start_time=datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC), state=state
    )


def test_the_summary_has_one_order_whether_task_runs_were_seen_here_or_read_from_the_api() -> None:
    """Task runs submitted in the same instant (a tie on expected start) come by name in both paths."""
    later, tie_b, tie_a = _run("train", 5), _run("prep@b", 1), _run("prep@a", 1)
    flow_run_id = uuid4()
    execution._declared[flow_run_id] = (later.id, tie_b.id, tie_a.id)
    execution._seen_task_runs.update({run.id: run for run in (later, tie_b, tie_a)})
    seen_here = execution._known_task_runs(flow_run_id)

    client = SimpleNamespace(read_task_runs=lambda **_: [tie_b, tie_a, later])  # the server's tie order
    from_api = execution._final_task_runs(client, flow_run_id)

    assert seen_here is not None
    assert [run.name for run in seen_here] == [run.name for run in from_api] == ["prep@a", "prep@b", "train"]
