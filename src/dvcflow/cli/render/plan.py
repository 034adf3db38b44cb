"""The plan of a per-stage run: its waves, and per stage whether it would run and why (and what it
declares it needs, when any stage does)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from dvcflow.cli.render import as_json, out
from dvcflow.core.graph import Decision, Plan

DECISION_STYLES = {
    Decision.CHANGED: "yellow",
    Decision.DOWNSTREAM: "yellow",
    Decision.UP_TO_DATE: "green",
}


def plan_view(plan: Plan, *, json: bool = False, mermaid: bool = False) -> None:
    """One row per stage, wave by wave; `--json` prints `Plan.as_dict()`, `--mermaid` the flowchart."""
    if mermaid:
        out.print(plan.mermaid(), markup=False, highlight=False, soft_wrap=True)
        return
    if json:
        as_json(plan.as_dict())
        return
    needs = any(not stage.demand.empty for stage in plan.stages)
    table = Table()
    table.add_column("Wave", justify="right")
    table.add_column("Stage")
    table.add_column("Would run")
    table.add_column("Why")
    if needs:
        table.add_column("Needs")
    for number, wave in enumerate(plan.waves, start=1):
        for name in wave:
            stage = plan.stage(name)
            verdict = "yes" if stage.would_run else "no"
            if stage.decision is Decision.DOWNSTREAM:
                verdict = "if DVC finds a change"
            cells: list[str | Text] = [
                str(number),
                name,
                Text(verdict, style=DECISION_STYLES[stage.decision]),
                Text(stage.reason, style="dim"),
            ]
            if needs:
                cells.append(Text(str(stage.demand), style="magenta"))
            table.add_row(*cells)
        if number < len(plan.waves):
            table.add_section()
    if not plan.stages:
        table.add_row("", Text("(no stages)", style="dim"), "", "")
    out.print(table)
    out.print(
        f"{len(plan.stages)} stages in {len(plan.waves)} waves: "
        f"{len(plan.would_run)} would run, {len(plan.up_to_date)} up to date.",
        soft_wrap=True,
    )
