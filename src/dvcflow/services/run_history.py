"""`dvcflow runs`: the recent flow runs of this repository (or of every repository), read from the API.

A repository's runs are the ones carrying its tag (`api.tags.repo_tag`): every `run-*` run and every run
of its deployments.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

MAX_LIMIT = 200  # the API's page size


def check_limit(limit: int) -> int:
    """`runs --limit`, refused before the API is contacted."""
    from dvcflow.core.errors import UsageError

    if not 1 <= limit <= MAX_LIMIT:
        raise UsageError(f"--limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


@dataclass(frozen=True)
class RunRow:
    id: str
    flow: str
    name: str
    deployment: str | None
    state: str
    start: datetime | None
    seconds: float
    ui_link: str | None
    message: str | None = None
    change: str | None = None  # what changed, for a run an on-change trigger started
    experiment: str | None = None  # the DVC experiment a run on another machine saved (`dvcflow fetch`)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "flow": self.flow,
            "name": self.name,
            "deployment": self.deployment,
            "state": self.state,
            "start": self.start.isoformat() if self.start else None,
            "seconds": round(self.seconds, 3),
            "ui_link": self.ui_link,
            "message": self.message,
            "change": self.change,
            "experiment": self.experiment,
        }


def recent_runs(root: Path | None, *, limit: int) -> tuple[RunRow, ...]:
    """The `limit` newest flow runs (not the ones merely scheduled), of repository `root` or, with
    `root=None`, of all."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowFilter,
        FlowFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    from dvcflow.api.failures import state_message
    from dvcflow.api.links import flow_run_link
    from dvcflow.api.tags import EXPERIMENT_TAG, repo_tag, tag_value

    begun = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=[StateType.SCHEDULED])),
        tags=FlowRunFilterTags(all_=[repo_tag(root)]) if root is not None else None,
    )
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=begun, sort=FlowRunSort.START_TIME_DESC, limit=limit)
        flow_ids = list({run.flow_id for run in runs})
        deployment_ids = list({run.deployment_id for run in runs if run.deployment_id})
        flows = {
            flow.id: flow.name
            for flow in client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=flow_ids)))
        }
        deployments = (
            {
                deployment.id: deployment.name
                for deployment in client.read_deployments(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids))
                )
            }
            if deployment_ids
            else {}
        )
    return tuple(
        RunRow(
            id=str(run.id),
            flow=flows.get(run.flow_id, "?"),
            name=run.name,
            deployment=deployments.get(run.deployment_id) if run.deployment_id else None,
            state=(run.state.name if run.state else None) or "Unknown",
            start=run.start_time,
            seconds=run.total_run_time.total_seconds() or _elapsed(run),
            ui_link=flow_run_link(run.id),
            message=state_message(run.state) if run.state and not run.state.is_completed() else None,
            change=_change(run.parameters),
            experiment=tag_value(list(run.tags), EXPERIMENT_TAG),
        )
        for run in runs
    )


def _change(parameters: dict[str, Any]) -> str | None:
    """What changed, for a deployment run its on-change trigger started (`core.changes`)."""
    from dvcflow.core.changes import Change

    change = Change.from_parameter(parameters.get("change"))
    return change.summary() if change is not None else None


def _elapsed(run: Any) -> float:
    if run.start_time and run.end_time:
        return float((run.end_time - run.start_time).total_seconds())
    return 0.0
