"""What `dvcflow deploy`, `trigger`, `runs` and `notify` print."""

from __future__ import annotations

from datetime import datetime

from rich.table import Table
from rich.text import Text

from dvcflow.cli.render import STATE_STYLES, out, seconds
from dvcflow.cli.render import as_json as render_json
from dvcflow.services.deploy import DeploymentInfo, RunEvent, TriggeredRun
from dvcflow.services.notify import Notification
from dvcflow.services.run_history import RunRow


def deployment_view(info: DeploymentInfo, *, serving: bool) -> None:
    """Where the deployment is and how to start a run of it."""
    where = "served from this process" if serving else f"in work pool {info.pool!r}"
    out.print(f"Deployment '{info.full_name}' ({info.schedule}), {where}.", soft_wrap=True)
    if info.ui_link:
        out.print(f"In the Prefect UI: {info.ui_link}", soft_wrap=True)
    out.print(
        f"Start a run: dvcflow trigger {info.name}  (or: prefect deployment run '{info.full_name}')",
        soft_wrap=True,
    )
    if serving:
        out.print("Serving; Ctrl-C stops.", soft_wrap=True)
    else:
        out.print(f"Runs start where a worker runs: prefect worker start --pool {info.pool}", soft_wrap=True)


def run_event(event: RunEvent) -> None:
    """One line as a served run starts, one as it ends."""
    stamp = datetime.now().strftime("%H:%M:%S")
    line = Text(f"{stamp} {event.run_name}: ")
    if not event.ended:
        line += Text("started", style="bold")
        if event.change:
            line += Text(f" ({event.change})")
    else:
        line += Text(event.state, style=STATE_STYLES.get(event.state, "bold"))
        line += Text(f" after {seconds(event.seconds)}")
        if event.message:
            line += Text(f" ({event.message})", style="red")
    if event.ui_link:
        line += Text(f"  {event.ui_link}", style="dim")
    out.print(line, soft_wrap=True)


def triggered_view(run: TriggeredRun) -> None:
    text = Text(f"Flow run {run.name!r} of '{run.deployment}': ")
    text += Text(run.state, style=STATE_STYLES.get(run.state, "bold"))
    out.print(text, soft_wrap=True)
    if run.ui_link:
        out.print(f"View it in the Prefect UI: {run.ui_link}", soft_wrap=True)


def runs_table(rows: tuple[RunRow, ...], *, as_json: bool) -> None:
    """Recent flow runs, newest first; then each run's UI link on a line of its own, whole at any width
    (a table column folded it over two lines, or dropped it at 100 columns). In a terminal that
    supports hyperlinks the run's name is a link too."""
    if as_json:
        render_json([row.to_dict() for row in rows])
        return
    table = Table()
    changes = any(row.change for row in rows)  # a column only when a run was started by a change
    experiments = any(row.experiment for row in rows)  # ... or saved a DVC experiment elsewhere
    columns = (
        "Flow",
        "Run",
        "Deployment",
        *(("Change",) if changes else ()),
        "State",
        *(("Experiment",) if experiments else ()),
        "Start",
        "Duration",
    )
    for column in columns:
        table.add_column(
            column,
            justify="right" if column == "Duration" else "left",
            overflow="fold",
            no_wrap=column in ("Run", "State", "Start", "Duration"),  # the Flow's words wrap instead
        )
    for row in rows:
        table.add_row(
            row.flow,
            Text(row.name, style=f"link {row.ui_link}" if row.ui_link else ""),
            row.deployment or "",
            *((row.change or "",) if changes else ()),
            Text(row.state, style=STATE_STYLES.get(row.state, "")),
            *((row.experiment or "",) if experiments else ()),
            row.start.astimezone().strftime("%m-%d %H:%M:%S") if row.start else "",
            seconds(row.seconds),
        )
    if not rows:
        table.add_row(Text("(no runs yet)", style="dim"), *[""] * (len(columns) - 1))
    out.print(table)
    widest = max((len(row.name) for row in rows if row.ui_link), default=0)
    for row in rows:
        if row.ui_link:
            out.print(f"{row.name:<{widest}}  {row.ui_link}", soft_wrap=True, highlight=False)


def notification_view(notification: Notification, *, removed: bool) -> None:
    on = ", ".join(notification.states)
    verb = "Removed" if removed else "Created" if notification.created else "Updated"
    out.print(
        f"{verb} notification {notification.name!r}: {notification.kind} {notification.target} "
        f"when a flow run of this repository ends {on}.",
        soft_wrap=True,
    )


def notifications_table(notifications: tuple[Notification, ...], *, as_json: bool) -> None:
    if as_json:
        render_json([item.to_dict() for item in notifications])
        return
    table = Table()
    for column in ("Name", "Kind", "Target", "On", "Enabled"):
        table.add_column(column, no_wrap=True)
    for item in notifications:
        table.add_row(
            item.name, item.kind, item.target, ", ".join(item.states), "yes" if item.enabled else "no"
        )
    if not notifications:
        table.add_row(Text("(none)", style="dim"), "", "", "", "")
    out.print(table)
