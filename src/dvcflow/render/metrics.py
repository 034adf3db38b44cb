"""Metrics as Rich tables."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from dvcflow.metrics import MetricsSnapshot
from dvcflow.render import err, out


def display_value(value: Any) -> str:
    """Round float noise for people (0.04999999999999993 → 0.05); JSON keeps the raw value."""
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value == value else "nan"
    return str(value)


def metrics_table(snapshot: MetricsSnapshot) -> None:
    table = Table(title="Metrics", title_justify="left")
    table.add_column("File")
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    for metric in snapshot.metrics:
        table.add_row(metric.file, metric.name, display_value(metric.value))
    out.print(table)
    for path, problem in snapshot.errors:
        err.print(Text(f"Warning: {path}: {problem}", style="yellow"), soft_wrap=True)
