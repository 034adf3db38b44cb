"""Metrics of a DVC repository — read, compared and published here, for the `metrics summary` task,
the post-run summary and `dvcflow metrics` alike.

Provides:
- `read_metrics` → `MetricsSnapshot`: the metrics files `dvc.yaml` declares, flattened.
- `diff_metrics` → `MetricsDiff`: the working tree against a git revision, like `dvc metrics diff`.
- `artifact_key` and `publish_metrics_artifact`: one Prefect table artifact per run, one key per
  repository, so the UI (and `dvcflow metrics --history`) can follow the metrics across runs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvcflow import dvcrepo
from dvcflow.errors import MetricsError

Scalar = float | int | str | bool | None
ARTIFACT_PREFIX = "dvcflow-metrics"


@dataclass(frozen=True)
class Metric:
    file: str
    name: str  # dotted for nested keys: "test.accuracy"
    value: Scalar


@dataclass(frozen=True)
class MetricsSnapshot:
    metrics: tuple[Metric, ...]
    errors: tuple[tuple[str, str], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.metrics

    def flat(self) -> dict[str, Scalar]:
        """`{"accuracy": ...}` for one file; `{"file:accuracy": ...}` when several files declare metrics."""
        single = len({m.file for m in self.metrics}) <= 1
        return {(m.name if single else f"{m.file}:{m.name}"): m.value for m in self.metrics}

    def by_file(self) -> dict[str, dict[str, Scalar]]:
        files: dict[str, dict[str, Scalar]] = {}
        for metric in self.metrics:
            files.setdefault(metric.file, {})[metric.name] = metric.value
        return files

    def to_json(self) -> str:
        return json.dumps(self.flat())

    def table_rows(self) -> list[dict[str, Scalar]]:
        """One row per metric: the shape of the Prefect table artifact, and what `from_rows` reads."""
        return [{"file": m.file, "metric": m.name, "value": m.value} for m in self.metrics]

    @classmethod
    def from_rows(cls, rows: object) -> MetricsSnapshot:
        """The inverse of `table_rows`; rows that do not fit are skipped."""
        if not isinstance(rows, list):
            return cls(())
        return cls(
            tuple(
                Metric(str(row["file"]), str(row["metric"]), row.get("value"))
                for row in rows
                if isinstance(row, dict) and "file" in row and "metric" in row
            )
        )


def _flatten(data: Mapping[str, object], prefix: str = "") -> Iterator[tuple[str, Scalar]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, prefix=f"{name}.")
        elif isinstance(value, (float, int, str, bool)) or value is None:
            yield name, value


def read_metrics(repo_root: Path) -> MetricsSnapshot:
    """Every metric declared in `dvc.yaml`, flattened; unreadable files are reported, not raised."""
    return snapshot_of(dvcrepo.metrics_show(repo_root))


def snapshot_of(files: dvcrepo.MetricsFiles) -> MetricsSnapshot:
    """What DVC showed (file → data, or an error message), flattened."""
    metrics: list[Metric] = []
    errors: list[tuple[str, str]] = []
    for path, data in sorted(files.items()):
        if isinstance(data, str):
            errors.append((path, data))
            continue
        metrics.extend(Metric(path, name, value) for name, value in _flatten(data))
    return MetricsSnapshot(tuple(metrics), tuple(errors))


def _no_metrics(missing: str) -> MetricsError:
    return MetricsError(f"no metrics yet ({missing})", hint="run `dvcflow run-a` to produce them")


def require_metrics(snapshot: MetricsSnapshot) -> MetricsSnapshot:
    if snapshot.empty:
        raise _no_metrics(", ".join(path for path, _ in snapshot.errors) or "none declared in dvc.yaml")
    return snapshot


# --- diff ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One metric (or param) at the revision (`old`) and in the working tree (`new`)."""

    file: str
    name: str
    old: Scalar
    new: Scalar
    change: float | int | None  # new - old when both are numbers, unrounded

    @property
    def changed(self) -> bool:
        both_nan = self.old != self.old and self.new != self.new  # NaN is not equal to itself
        return self.old != self.new and not both_nan


@dataclass(frozen=True)
class MetricsDiff:
    rev: str
    metrics: tuple[Change, ...]
    params: tuple[Change, ...] | None = None  # None: not asked for
    errors: tuple[tuple[str, str, str], ...] = ()  # (revision, file, problem)

    @property
    def changed(self) -> bool:
        return any(c.changed for c in (*self.metrics, *(self.params or ())))

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of `dvc metrics diff --json` per section, raw values, plus the revision."""

        def section(changes: tuple[Change, ...]) -> dict[str, dict[str, dict[str, Any]]]:
            files: dict[str, dict[str, dict[str, Any]]] = {}
            for c in changes:
                entry = {"old": c.old, "new": c.new, "diff": c.change, "changed": c.changed}
                files.setdefault(c.file, {})[c.name] = entry
            return files

        data: dict[str, Any] = {"rev": self.rev, "metrics": section(self.metrics)}
        if self.params is not None:
            data["params"] = section(self.params)
        return data


def _number(value: object) -> float | int | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _scalar(value: object) -> Scalar:
    """Lists and mappings (possible in params) are compared by DVC and shown as text here."""
    return value if value is None or isinstance(value, (float, int, str, bool)) else str(value)


def _changes(raw: dvcrepo.DvcDiff) -> tuple[Change, ...]:
    changes = []
    for path in sorted(raw.entries):
        for name, entry in sorted(raw.entries[path].items()):
            old, new = _scalar(entry.get("old")), _scalar(entry.get("new"))
            delta = _number(entry.get("diff"))
            before, after = _number(old), _number(new)
            if delta is None and before is not None and after is not None:
                delta = after - before
            changes.append(Change(path, name, old, new, delta))
    return tuple(changes)


def diff_metrics(repo_root: Path, rev: str = "HEAD", *, params: bool = False) -> MetricsDiff:
    """The working tree's metrics (and params) against git revision `rev`, every metric listed."""
    raw = dvcrepo.metrics_diff(repo_root, rev)
    metrics = _changes(raw)
    if not any(c.new is not None for c in metrics):
        missing = sorted({path for revision, path, _ in raw.errors if revision == "workspace" and path})
        raise _no_metrics(", ".join(missing) or "nothing in the working tree")
    raw_params = dvcrepo.params_diff(repo_root, rev) if params else None
    return MetricsDiff(
        rev=rev,
        metrics=metrics,
        params=_changes(raw_params) if raw_params is not None else None,
        errors=raw.errors + (raw_params.errors if raw_params is not None else ()),
    )


# --- Prefect artifact ---------------------------------------------------------------------------------


def artifact_key(repo_root: Path, prefix: str = ARTIFACT_PREFIX) -> str:
    """`dvcflow-metrics-<repository identity>` (or another `prefix`): the same after a move or on another
    clone, distinct for two repositories (`dvcflow.identity`). Prefect allows only lowercase letters,
    digits and dashes in keys."""
    from dvcflow.identity import repo_identity

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
