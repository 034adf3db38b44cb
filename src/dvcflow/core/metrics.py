"""Metrics of a DVC repository — read, compared and published here, for the `metrics summary` task,
the post-run summary and `dvcflow metrics` alike.

Provides:
- `read_metrics` → `MetricsSnapshot`: the metrics files `dvc.yaml` declares, flattened.
- `diff_metrics` → `MetricsDiff`: the working tree against a git revision, like `dvc metrics diff`.
- `artifact_key` and `publish_metrics_artifact`: one Prefect table artifact per run, one key per
  repository, so the UI (and `dvcflow metrics --history`) can follow the metrics across runs."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dvcflow.core.errors import MetricsError

MetricsFiles = dict[str, dict[str, object] | str]  # file → its parsed data, or an error message
Scalar = float | int | str | bool | None


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


def snapshot_of(files: MetricsFiles) -> MetricsSnapshot:
    """What DVC showed (file → data, or an error message), flattened."""
    metrics: list[Metric] = []
    errors: list[tuple[str, str]] = []
    for path, data in sorted(files.items()):
        if isinstance(data, str):
            errors.append((path, data))
            continue
        metrics.extend(Metric(path, name, value) for name, value in _flatten(data))
    return MetricsSnapshot(tuple(metrics), tuple(errors))


NO_SUCH_FILE = "no such file"  # a metrics file's problem when it does not exist (yet)


def no_metrics_error(missing: str) -> MetricsError:
    return MetricsError(f"no metrics yet ({missing})", hint="run `dvcflow run-a` to produce them")


def require_metrics(snapshot: MetricsSnapshot, missing: str = "none declared in dvc.yaml") -> MetricsSnapshot:
    """`snapshot` if it has a metric; else why not: a file that exists but cannot be read, or none yet."""
    if snapshot.empty:
        for path, problem in snapshot.errors:
            if problem != NO_SUCH_FILE:
                raise MetricsError(
                    f"{path}: the metrics file cannot be read ({problem})",
                    hint="fix or delete it: the stage that writes it writes it again when it runs",
                )
        raise no_metrics_error(", ".join(path for path, _ in snapshot.errors) or missing)
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


def as_number(value: object) -> float | int | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def as_scalar(value: object) -> Scalar:
    """Lists and mappings (possible in params) are compared by DVC and shown as text here."""
    return value if value is None or isinstance(value, (float, int, str, bool)) else str(value)
