"""The post-run summary: each task's final state, attempts and duration, then the flow's verdict."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from dvcflow.render import STATE_STYLES, out, seconds
from dvcflow.render.metrics import metrics_table
from dvcflow.runs import FlowRunRecord


def run_summary(record: FlowRunRecord) -> None:
    """A dbt-like recap of one flow run."""
    out.print(Text(f"{record.flow_name} · {record.name}", style="bold"), soft_wrap=True)
    table = Table()
    table.add_column("Task")
    table.add_column("State")
    table.add_column("Attempts", justify="right")
    table.add_column("Duration", justify="right")
    for task in record.tasks:
        style = STATE_STYLES.get(task.state, "")
        table.add_row(task.name, Text(task.state, style=style), str(task.attempts), seconds(task.seconds))
    if not record.tasks:
        table.add_row(Text("(no task ran)", style="dim"), "", "", "")
    out.print(table)
    for task in record.tasks:
        if task.message and task.state not in ("Completed", "Cached"):
            out.print(Text(f"{task.name}: ", style="bold red") + Text(task.message), soft_wrap=True)
    if record.metrics is not None and not record.metrics.empty:
        metrics_table(record.metrics)
    if record.message:
        out.print(Text(record.message, style="red"), soft_wrap=True)
    verdict = Text(f"Flow run {record.name!r} finished in state ")
    verdict += Text(record.state, style=STATE_STYLES.get(record.state, "bold"))
    verdict += Text(f" after {seconds(record.seconds)}.")
    out.print(verdict, soft_wrap=True)
    if record.ui_link:
        out.print(f"View it in the Prefect UI: {record.ui_link}", soft_wrap=True)
