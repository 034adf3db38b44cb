"""dvcflow's change event in Prefect: sending `dvcflow.repository.changed` (`emit_change`) and the deployment
trigger that turns it into a run (`change_trigger`).

Why Prefect's events and triggers, not a run started by the watcher: the server records every event (the
UI's Event Feed, `/events/filter`), the trigger is part of the deployment (the UI shows it, anyone can
disable it), and a watcher on one machine can start runs a worker executes on another.

The event's resource is the repository's identity (`dvcflow.repo.<id>`, `core.identity`: the same for every
clone), so the trigger matches this repository's events and no other's; its related resources are what
changed (paths, the commit, the imports); its payload is the `Change`, which the trigger hands to the run
as its `change` parameter.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

from dvcflow.core.changes import BRANCH, EVENT, FILES, IMPORTS, Change

RESOURCE_PREFIX = "dvcflow.repo."
MAX_RELATED = 50  # related resources an event names; the payload has the rest
DRAIN_S = 10.0  # at most this long to hand events still queued to the server at exit


def repo_resource_id(root: Path) -> str:
    """The Prefect resource id of the repository at `root`."""
    from dvcflow.core.identity import repo_identity

    return f"{RESOURCE_PREFIX}{repo_identity(root).id}"


def _related(change: Change) -> list[dict[str, str]]:
    def resource(kind: str, value: str, role: str) -> dict[str, str]:
        return {"prefect.resource.id": f"dvcflow.{kind}.{value}", "prefect.resource.role": role,
                "prefect.resource.name": value}  # fmt: skip

    if change.kind == FILES:
        return [resource("path", path, "changed-path") for path in change.paths[:MAX_RELATED]]
    if change.kind == BRANCH and change.commit:
        return [resource("commit", change.commit, "commit")]
    if change.kind == IMPORTS:
        return [resource("import", name, "import") for name in change.imports[:MAX_RELATED]]
    return []


def emit_change(root: Path, change: Change) -> Change:
    """Send `change` as a `dvcflow.repository.changed` event about the repository at `root`; the change
    returned names the event. A `RuntimeError` when Prefect would not send it (no API configured)."""
    from prefect.events import emit_event

    event_id = uuid.uuid4()
    named = dataclasses.replace(change, event_id=str(event_id))
    sent = emit_event(
        EVENT,
        resource={"prefect.resource.id": repo_resource_id(root), "prefect.resource.name": root.name},
        related=_related(named),
        payload=named.to_payload(),
        id=event_id,
    )
    if sent is None:
        raise RuntimeError("Prefect did not send the event (is an API configured?)")
    return named


def drain_events() -> None:
    """Hand every event still queued in this process to the server (bounded), before it exits."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=DRAIN_S)


def change_trigger(root: Path, name: str) -> Any:
    """The deployment trigger: every `dvcflow.repository.changed` event about this repository starts one
    run, its `change` parameter the event's payload."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name=f"{name}: run on change",
        description=f"dvcflow deploy --on-change: a run when the inputs of {root} change.",
        expect={EVENT},
        match={"prefect.resource.id": repo_resource_id(root)},
        threshold=1,  # reactive (the default posture): each event fires
        parameters={"change": "{{ event.payload }}"},
    )


def one_at_a_time() -> Any:
    """The deployment's concurrency: one run; a run triggered meanwhile waits its turn (queued)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
