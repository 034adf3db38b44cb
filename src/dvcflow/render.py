"""Everything a person reads: Rich tables on stdout, one-line errors on stderr, JSON for scripts."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from dvcflow.errors import DvcflowError
    from dvcflow.metrics import MetricsSnapshot
    from dvcflow.runs import FlowRunRecord
    from dvcflow.server import ServerStatus

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

STATE_STYLES = {
    "Completed": "green",
    "Cached": "cyan",
    "Failed": "red",
    "Crashed": "red",
    "Cancelled": "yellow",
    "NotReady": "yellow",
}


def error(exc: DvcflowError) -> None:
    """One `Error: ...` line (plus an optional `Hint:` line) on stderr."""
    err.print(Text("Error: ", style="bold red") + Text(exc.message))
    if exc.hint:
        err.print(Text(f"Hint: {exc.hint}", style="dim"))


def info(message: str) -> None:
    """Progress notes go to stderr so stdout stays clean for tables and JSON."""
    err.print(Text(message, style="dim"), soft_wrap=True)


def _seconds(value: float) -> str:
    return f"{value:.2f}s" if value < 60 else f"{int(value // 60)}m{value % 60:04.1f}s"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value == value else "nan"
    return str(value)


def run_summary(record: FlowRunRecord) -> None:
    """A dbt-like recap: each task's final state, attempts and duration, then the flow's verdict."""
    table = Table(title=f"{record.flow_name} · {record.name}", title_justify="left")
    table.add_column("Task")
    table.add_column("State")
    table.add_column("Attempts", justify="right")
    table.add_column("Duration", justify="right")
    for task in record.tasks:
        style = STATE_STYLES.get(task.state, "")
        table.add_row(task.name, Text(task.state, style=style), str(task.attempts), _seconds(task.seconds))
    if not record.tasks:
        table.add_row(Text("(no task ran)", style="dim"), "", "", "")
    out.print(table)
    for task in record.tasks:
        if task.message and task.state not in ("Completed", "Cached"):
            out.print(Text(f"{task.name}: ", style="bold red") + Text(task.message))
    if record.metrics is not None and not record.metrics.empty:
        metrics_table(record.metrics)
    verdict = Text(f"Flow run {record.name!r} finished in state ")
    verdict += Text(record.state, style=STATE_STYLES.get(record.state, "bold"))
    verdict += Text(f" after {_seconds(record.seconds)}.")
    out.print(verdict)
    if record.ui_link:
        out.print(f"View it in the Prefect UI: {record.ui_link}", soft_wrap=True)


def metrics_table(snapshot: MetricsSnapshot) -> None:
    table = Table(title="Metrics", title_justify="left")
    table.add_column("File")
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    for metric in snapshot.metrics:
        table.add_row(metric.file, metric.name, _value(metric.value))
    out.print(table)
    for path, problem in snapshot.errors:
        err.print(Text(f"Warning: {path}: {problem}", style="yellow"))


def metrics_json(snapshot: MetricsSnapshot) -> None:
    out.print_json(json.dumps(snapshot.by_file()))


def server_status(status: ServerStatus) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    state = Text("running", style="green") if status.running else Text("stopped", style="yellow")
    table.add_row("Server", state)
    table.add_row("URL", status.url)
    table.add_row("API", status.api_url)
    table.add_row("PID", str(status.pid) if status.pid else "-")
    table.add_row("Prefect", status.prefect_version or "-")
    table.add_row("Database", status.database)
    table.add_row("Log", str(status.log_file))
    out.print(table)


def as_json(data: Any) -> None:
    """Plain JSON on stdout (no colour, no wrapping), for scripts."""
    print(json.dumps(data, indent=2))
