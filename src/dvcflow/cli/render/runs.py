"""The post-run summary: each task's final state, attempts and duration (and, when stages declare
resources, how long each waited for them), then the flow's verdict."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from dvcflow.cli.render import STATE_STYLES, as_json, out, seconds
from dvcflow.cli.render.metrics import metrics_table
from dvcflow.core.records import FlowRunRecord, StagesReport

STAGE_VERDICTS = (
    ("ran", "ran", "green"),
    ("failed", "failed", "red"),
    ("pulled", "pulled from the remote", "cyan"),
    ("restored", "restored from the run cache", "cyan"),
    ("skipped", "up to date", "dim"),
)


def run_summary(record: FlowRunRecord) -> None:
    """A dbt-like recap of one flow run."""
    out.print(Text(f"{record.flow_name} · {record.name}", style="bold"), soft_wrap=True)
    waits = any(task.waited is not None for task in record.tasks)
    table = Table()
    table.add_column("Task")
    table.add_column("State")
    table.add_column("Attempts", justify="right")
    table.add_column("Duration", justify="right")
    if waits:
        table.add_column("Waited for resources", justify="right")
    for task in record.tasks:
        style = STATE_STYLES.get(task.state, "")
        cells: list[str | Text] = [
            task.name,
            Text(task.state, style=style),
            str(task.attempts),
            seconds(task.seconds),
        ]
        if waits:
            cells.append(seconds(task.waited) if task.waited is not None else "")
        table.add_row(*cells)
    if not record.tasks:
        table.add_row(Text("(no task ran)", style="dim"), "", "", "")
    out.print(table)
    if record.stages is not None:
        out.print(stages_line(record.stages), soft_wrap=True)
    said = [task for task in record.tasks if task.message and task.state not in ("Completed", "Cached")]
    for task in said:  # a failed stage's last error lines, continued under its name
        out.print(
            Text(f"{task.name}: ", style="bold red") + Text(_indented(task.message or "")), soft_wrap=True
        )
    if record.metrics is not None and not record.metrics.empty:
        metrics_table(record.metrics)
    message = record.message or ""
    for task in said:  # the flow run's message repeats each failed stage's: said above
        message = "" if message == task.message else message.replace(f"\n{task.name}: {task.message}", "")
    if message:
        out.print(Text(message, style="red"), soft_wrap=True)
    verdict(record)


def _indented(message: str) -> str:
    return message.replace("\n", "\n  ")


def verdict(record: FlowRunRecord) -> None:
    """The flow run's final state and duration, then the UI link: the last lines after any run."""
    line = Text(f"Flow run {record.name!r} finished in state ")
    line += Text(record.state, style=STATE_STYLES.get(record.state, "bold"))
    line += Text(f" after {seconds(record.seconds)}.")
    out.print(line, soft_wrap=True)
    if record.ui_link:
        out.print(f"View it in the Prefect UI: {record.ui_link}", soft_wrap=True)


def stages_line(stages: StagesReport) -> Text:
    """`Stages: ran prepare, train · up to date evaluate`: what `dvc repro` did with each stage."""
    line = Text("Stages: ", style="bold")
    parts = [(label, style, getattr(stages, kind)) for kind, label, style in STAGE_VERDICTS]
    shown = [(label, style, names) for label, style, names in parts if names]
    if not shown:
        return line + Text("none visited", style="dim")
    for number, (label, style, names) in enumerate(shown):
        if number:
            line += Text(" · ")
        line += Text(label, style=style) + Text(" " + ", ".join(names))
    return line


def run_json(record: FlowRunRecord) -> None:
    """The flow run, its tasks, the stages DVC ran or skipped, and the metrics, as strict JSON."""
    data: dict[str, Any] = {
        "flow_run": {
            "id": record.id,
            "name": record.name,
            "flow": record.flow_name,
            "state": record.state,
            "seconds": record.seconds,
            "message": record.message,
            "ui_link": record.ui_link,
        },
        "tasks": [
            {
                "name": task.name,
                "state": task.state,
                "attempts": task.attempts,
                "seconds": task.seconds,
                "message": task.message,
                "waited": task.waited,
            }
            for task in record.tasks
        ],
        "stages": record.stages.as_dict() if record.stages is not None else None,
        "metrics": record.metrics.by_file() if record.metrics is not None else None,
    }
    as_json(data)


def show_run(record: FlowRunRecord, *, json: bool = False) -> None:
    """What every run command prints at the end: strict JSON for scripts, else the Rich summary."""
    if json:
        run_json(record)
    else:
        run_summary(record)
