"""The metrics of past flow runs, read back from the Prefect API.

Every `metrics summary` task publishes a table artifact under the repository's key
(`api.artifacts.artifact_key`); this module reads the newest ones back as plain records, including
those published under the older path-based key (`api.artifacts.legacy_artifact_key`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dvcflow.api.artifacts import artifact_key, legacy_artifact_key
from dvcflow.api.connect import connect
from dvcflow.core.errors import MetricsError, ServerError
from dvcflow.core.metrics import MetricsSnapshot, Scalar
from dvcflow.dvc import repository


@dataclass(frozen=True)
class HistoryEntry:
    """The metrics one flow run published."""

    flow_run_id: str | None
    flow_run_name: str
    flow_name: str
    created: datetime
    snapshot: MetricsSnapshot


@dataclass(frozen=True)
class MetricsHistory:
    key: str
    entries: tuple[HistoryEntry, ...]  # newest first

    def names(self) -> tuple[tuple[str, str], ...]:
        """Every (file, metric) seen, in first-seen order from the newest run."""
        seen: dict[tuple[str, str], None] = {}
        for entry in self.entries:
            for metric in entry.snapshot.metrics:
                seen.setdefault((metric.file, metric.name), None)
        return tuple(seen)

    def series(self, file: str, name: str) -> tuple[Scalar, ...]:
        """One metric's values, oldest → newest, None where a run did not have it."""
        values = []
        for entry in reversed(self.entries):
            found = [m.value for m in entry.snapshot.metrics if (m.file, m.name) == (file, name)]
            values.append(found[0] if found else None)
        return tuple(values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "runs": [
                {
                    "flow_run_id": entry.flow_run_id,
                    "flow_run": entry.flow_run_name,
                    "flow": entry.flow_name,
                    "created": entry.created.isoformat(),
                    "metrics": entry.snapshot.by_file(),
                }
                for entry in self.entries
            ],
        }


def _table(data: object) -> object:
    """A table artifact's data comes back as the JSON string Prefect stored."""
    if isinstance(data, str):
        try:
            return json.loads(data)
        except ValueError:
            return None
    return data


def _read(keys: list[str], limit: int) -> tuple[HistoryEntry, ...]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowFilter,
        FlowFilterId,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)),
            sort=ArtifactSort.CREATED_DESC,
            limit=limit,
        )
        run_ids = list({a.flow_run_id for a in artifacts if a.flow_run_id is not None})
        runs = (
            {
                r.id: r
                for r in client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids))
                )
            }
            if run_ids
            else {}
        )
        flow_ids = list({r.flow_id for r in runs.values()})
        flows = (
            {f.id: f.name for f in client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=flow_ids)))}
            if flow_ids
            else {}
        )
    entries = []
    for artifact in artifacts:
        run = runs.get(artifact.flow_run_id) if artifact.flow_run_id else None
        entries.append(
            HistoryEntry(
                flow_run_id=str(artifact.flow_run_id) if artifact.flow_run_id else None,
                flow_run_name=run.name if run else "(unknown run)",
                flow_name=flows.get(run.flow_id, "") if run else "",
                created=artifact.created or datetime.now().astimezone(),
                snapshot=MetricsSnapshot.from_rows(_table(artifact.data)),
            )
        )
    return tuple(entries)


def read_history(
    repo: Path | None, limit: int, *, announce: Callable[[str], None] = lambda _: None
) -> MetricsHistory:
    """The metrics of the last `limit` flow runs of this repository's pipeline, newest first."""
    root = repository.find_repo_root(repo)
    connect(root, ephemeral=False, announce=announce)
    key = artifact_key(root)
    import httpx

    try:
        # One query for both keys: runs recorded before repository identities existed stay in the history
        # (as long as the repository has not moved since).
        entries = _read([key, legacy_artifact_key(root)], limit)
    except httpx.HTTPError as err:
        raise ServerError(f"cannot read the metrics history from the Prefect API ({err})") from None
    if not entries:
        raise MetricsError(
            f"no flow run has published metrics for {root} yet (artifact key {key})",
            hint="run `dvcflow run-a`; each run records its metrics",
        )
    return MetricsHistory(key, entries)
