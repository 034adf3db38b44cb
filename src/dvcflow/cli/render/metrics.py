"""Metrics as Rich tables: the current values, a diff against a revision, and the history of runs.

Floats are rounded for people here; `--json` goes through `dvcflow.cli.render.as_json` with raw values.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from dvcflow.cli.render import as_json, err, out
from dvcflow.core.metrics import Change, MetricsDiff, MetricsSnapshot, Scalar

if TYPE_CHECKING:
    from dvcflow.services.history import MetricsHistory

SPARKS = "▁▂▃▄▅▆▇█"
CHANGED_STYLE = "bold yellow"


def display_value(value: Any) -> str:
    """Round float noise for people (0.04999999999999993 → 0.05); JSON keeps the raw value."""
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value == value else "nan"
    if value is None:
        return "—"
    return str(value)


def display_change(change: Change) -> str:
    """`+0.05`, `-0.5`, `0`; words where there is no number to subtract."""
    if change.change is not None:
        if change.change == 0:
            return "0"
        if isinstance(change.change, float) and abs(change.change) < 5e-5:
            return f"{change.change:+.2g}"  # too small for 4 decimals, yet a change
        return f"{'+' if change.change > 0 else ''}{display_value(change.change)}"
    if not change.changed:
        return ""
    if change.old is None:
        return "added"
    return "removed" if change.new is None else "changed"


def _warn(message: str) -> None:
    err.print(Text(f"Warning: {message}", style="yellow"), soft_wrap=True)


def metrics_table(snapshot: MetricsSnapshot) -> None:
    table = Table(title="Metrics", title_justify="left")
    table.add_column("File")
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    for metric in snapshot.metrics:
        table.add_row(metric.file, metric.name, display_value(metric.value))
    out.print(table)
    for path, problem in snapshot.errors:
        _warn(f"{path}: {problem}")


def _changes_table(title: str, column: str, rev: str, changes: tuple[Change, ...]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("File")
    table.add_column(column)
    table.add_column(rev, justify="right")
    table.add_column("workspace", justify="right")
    table.add_column("Change", justify="right")
    for change in changes:
        table.add_row(
            change.file,
            change.name,
            display_value(change.old),
            display_value(change.new),
            display_change(change),
            style=CHANGED_STYLE if change.changed else None,
        )
    return table


def metrics_diff_table(diff: MetricsDiff) -> None:
    """Old, new and change per metric (and param), changed rows highlighted, like `dvc metrics diff`."""
    out.print(_changes_table(f"Metrics: {diff.rev} → workspace", "Metric", diff.rev, diff.metrics))
    if diff.params is not None:
        out.print(_changes_table(f"Params: {diff.rev} → workspace", "Param", diff.rev, diff.params))
    changed = sum(c.changed for c in (*diff.metrics, *(diff.params or ())))
    out.print(f"{changed} changed since {diff.rev}." if changed else f"No change since {diff.rev}.")
    for revision, path, problem in diff.errors:
        _warn(f"{path or 'all files'} at {revision}: {problem}")


def sparkline(values: tuple[Scalar, ...]) -> str:
    """`▁▃█`: one block per value, scaled between the smallest and the largest; blank when not a number."""
    numbers = [
        float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None
        for v in values
    ]
    present = [v for v in numbers if v is not None]
    if not present:
        return ""
    low, high = min(present), max(present)
    span = high - low
    top = len(SPARKS) - 1
    return "".join(
        " " if v is None else SPARKS[round((v - low) / span * top) if span else top // 2] for v in numbers
    )


def history_tables(history: MetricsHistory) -> None:
    """Newest first: one row per flow run; then one trend per metric, oldest → newest."""
    names = history.names()
    single = len({file for file, _ in names}) <= 1
    label = {key: key[1] if single else f"{key[0]}:{key[1]}" for key in names}
    runs = Table(
        title=f"Metrics of the last {len(history.entries)} flow runs (newest first)", title_justify="left"
    )
    runs.add_column("Flow run")
    runs.add_column("Flow")
    runs.add_column("Published")
    for key in names:
        runs.add_column(label[key], justify="right")
    for entry in history.entries:
        values = {(m.file, m.name): m.value for m in entry.snapshot.metrics}
        runs.add_row(
            entry.flow_run_name,
            entry.flow_name,
            entry.created.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            *(display_value(values.get(key)) for key in names),
        )
    out.print(runs)

    trend = Table(title="Trend (oldest → newest)", title_justify="left")
    trend.add_column("Metric")
    trend.add_column("Trend")
    trend.add_column("Oldest", justify="right")
    trend.add_column("Newest", justify="right")
    for key in names:
        series = history.series(*key)
        trend.add_row(label[key], sparkline(series), display_value(series[0]), display_value(series[-1]))
    out.print(trend)
    out.print(Text(f"Prefect artifact key: {history.key}", style="dim"), soft_wrap=True)


def show(result: MetricsSnapshot | MetricsDiff | MetricsHistory, *, json: bool = False) -> None:
    """What `dvcflow metrics` prints for each of its modes; JSON keeps the raw values."""
    if json:
        as_json(result.by_file() if isinstance(result, MetricsSnapshot) else result.to_dict())
    elif isinstance(result, MetricsSnapshot):
        metrics_table(result)
    elif isinstance(result, MetricsDiff):
        metrics_diff_table(result)
    else:
        history_tables(result)
