"""Metrics of a DVC repository — read once here, for the `metrics summary` task, the post-run summary
and `dvcflow metrics` alike."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from dvcflow import dvcrepo
from dvcflow.errors import MetricsError

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


def _flatten(data: Mapping[str, object], prefix: str = "") -> Iterator[tuple[str, Scalar]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, prefix=f"{name}.")
        elif isinstance(value, (float, int, str, bool)) or value is None:
            yield name, value


def read_metrics(repo_root: Path) -> MetricsSnapshot:
    """Every metric declared in `dvc.yaml`, flattened; unreadable files are reported, not raised."""
    metrics: list[Metric] = []
    errors: list[tuple[str, str]] = []
    for path, data in sorted(dvcrepo.metrics_show(repo_root).items()):
        if isinstance(data, str):
            errors.append((path, data))
            continue
        metrics.extend(Metric(path, name, value) for name, value in _flatten(data))
    return MetricsSnapshot(tuple(metrics), tuple(errors))


def require_metrics(snapshot: MetricsSnapshot) -> MetricsSnapshot:
    if snapshot.empty:
        missing = ", ".join(path for path, _ in snapshot.errors) or "none declared in dvc.yaml"
        raise MetricsError(f"no metrics yet ({missing})", hint="run `dvcflow run-a` to produce them")
    return snapshot
