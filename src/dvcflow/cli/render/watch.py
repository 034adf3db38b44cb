"""What `dvcflow deploy --on-change` and `dvcflow watch` print about watching: what is watched, one line
per change event sent, one per check that failed."""

from __future__ import annotations

from datetime import datetime

from rich.text import Text

from dvcflow.cli.render import err, out
from dvcflow.core.changes import EVENT, Change
from dvcflow.services.watch import WatchPlan


def _stamp() -> str:
    return datetime.now().strftime("%H:%M:%S")


def watching_view(plan: WatchPlan) -> None:
    out.print(
        f"Watching {plan.describe()}; changes less than {plan.options.debounce:g} s apart start one run.",
        soft_wrap=True,
    )


def watch_command(plan: WatchPlan) -> None:
    """After registering a work-pool deployment with --on-change: the watchers are a command of their own."""
    flags = plan.options.flags()
    out.print(
        f"Runs start on change while the watchers run: dvcflow watch{' ' + flags if flags else ''}",
        soft_wrap=True,
    )


def change_line(change: Change) -> None:
    line = Text(f"{_stamp()} {EVENT}: ")
    line += Text(change.summary(), style="bold")
    if change.event_id:
        line += Text(f"  event {change.event_id}", style="dim")
    out.print(line, soft_wrap=True)


def problem_line(message: str) -> None:
    err.print(Text(f"{_stamp()} watch: {message}", style="yellow"), soft_wrap=True)
