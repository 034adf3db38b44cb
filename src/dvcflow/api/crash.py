"""TODO docstring."""

from __future__ import annotations

from pathlib import Path

from dvcflow.api.execution import PAGE
from dvcflow.api.tags import HOST_TAG, PID_TAG, _tag_value, repo_tag


def crash_orphaned_runs(repo_root: Path) -> int:
    """Set this repository's unfinished flow runs to Crashed when they ran on this host and their process
    is gone. A run of another host (same repository on a shared server) is never touched."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    from dvcflow.proc import liveness

    here = liveness.host_id()
    unfinished = FlowRunFilter(
        tags=FlowRunFilterTags(all_=[repo_tag(repo_root), f"{HOST_TAG}{here}"]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])),
    )
    crashed = 0
    try:
        with get_client(sync_client=True) as client:
            for run in client.read_flow_runs(flow_run_filter=unfinished, limit=PAGE):
                token = _tag_value(run.tags, PID_TAG)
                if token is None or liveness.alive(token):
                    continue
                message = f"its dvcflow process ({token} on {here}) is gone; found by the next run"
                client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                crashed += 1
    except Exception:  # housekeeping only: never the reason a run does not start
        return crashed
    return crashed
