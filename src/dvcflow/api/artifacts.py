"""Where a run's metrics live in Prefect: one table artifact per flow run, under a key made from the
repository's identity.

Why an artifact under such a key: Prefect keeps every version of a keyed artifact, so the metrics history
(`dvcflow.services.history`) is one query for the key, and the key stays the same after the repository
moves or on another clone (`dvcflow.core.identity`). Runs recorded before identities existed used a
path-based key, which is read, never written, so they stay in the history.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from dvcflow.core.metrics import MetricsSnapshot

ARTIFACT_PREFIX = "dvcflow-metrics"


# --- Prefect artifact ---------------------------------------------------------------------------------


def artifact_key(repo_root: Path, prefix: str = ARTIFACT_PREFIX) -> str:
    """`dvcflow-metrics-<repository identity>` (or another `prefix`): the same after a move or on another
    clone, distinct for two repositories (`dvcflow.core.identity`). Prefect allows only lowercase letters,
    digits and dashes in keys."""
    from dvcflow.core.identity import repo_identity

    return f"{prefix}-{repo_identity(repo_root).id}"


def legacy_artifact_key(repo_root: Path) -> str:
    """The path-based key dvcflow used before repository identities, read (never written) by the history."""
    resolved = repo_root.resolve()
    slug = re.sub(r"[^a-z0-9]+", "-", resolved.name.lower()).strip("-")[:40].strip("-") or "repo"
    digest = hashlib.sha1(str(resolved).encode(), usedforsecurity=False).hexdigest()[:6]
    return f"{ARTIFACT_PREFIX}-{slug}-{digest}"


def publish_metrics_artifact(snapshot: MetricsSnapshot, key: str, *, description: str | None = None) -> str:
    """One table artifact (file, metric, value) for the current flow run; returns its id.

    Must run inside a flow or task run, against a Prefect API: the artifact is linked to that run.
    """
    from prefect.artifacts import create_table_artifact

    return str(create_table_artifact(table=snapshot.table_rows(), key=key, description=description))
