"""A sweep on the terminal: live progress and the trials ended so far (the best marked) while trials
run, then the trial table and the verdict."""

from __future__ import annotations

import threading
from types import TracebackType

from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from dvcflow.cli.render import STATE_STYLES, as_json, err, out, seconds
from dvcflow.cli.render.metrics import display_value
from dvcflow.cli.render.runs import verdict
from dvcflow.engine.trials import SweepProgress, SweepReport, metric_cell, metric_names, table_rows

BEST_MARK = "★"
LIVE_ROWS = 8  # the trials ended last, in the live table


class SweepProgressView:
    """Trials done / running / failed as a Rich progress bar on stderr, from the first trial on; above
    it, on a terminal, the trials ended last and the best so far (★)."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._live: Live | None = None
        self._task: TaskID | None = None
        self._lock = threading.Lock()  # trials report from their own threads

    def __enter__(self) -> SweepProgressView:
        return self

    def update(self, state: SweepProgress) -> None:
        if self.enabled:
            with self._lock:
                self._show(state)

    def _show(self, state: SweepProgress) -> None:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("Trials"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=err,
            )
            self._task = self._progress.add_task("", total=state.total)
            self._live = Live(self._progress, console=err, transient=True, refresh_per_second=4)
            self._live.start()
        assert self._task is not None and self._live is not None
        description = f"done {state.completed} · running {state.running} · failed {state.failed}"
        self._progress.update(self._task, completed=state.finished, description=description)
        if state.rows:
            self._live.update(Group(live_table(state), self._progress))

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.stop()
            err.print(self._progress)  # the bar's last state stays; the live rows are in the final table


def short(value: str) -> str:
    """A param's value as written, or 6 significant digits of a long float a search drew (the
    experiment has it whole)."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.6g}" if len(value) > 8 and "." in value else value


def live_table(state: SweepProgress) -> Table:
    """The trials ended last (at most `LIVE_ROWS`) and the best so far, marked."""
    table = Table(box=None, pad_edge=False)
    table.add_column("Trial", justify="right")
    labels = list(dict.fromkeys(label for row in state.rows for label in row.values))
    names = list(dict.fromkeys(name for row in state.rows for name in row.metrics))
    for label in labels:
        table.add_column(label, justify="right")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("State")
    shown = list(state.rows[-LIVE_ROWS:])
    best = next((row for row in state.rows if row.index == state.best), None)
    if best is not None and best not in shown:
        shown.insert(0, best)
    for row in shown:
        mark = f" {BEST_MARK}" if row.index == state.best else ""
        cells = [f"{row.index}{mark}", *(short(row.values.get(label, "")) for label in labels)]
        cells += [display_value(row.metrics.get(name)) for name in names]
        table.add_row(
            *cells, Text(row.state, style=STATE_STYLES.get(row.state, "")), style="bold" if mark else ""
        )
    return table


def sweep_summary(report: SweepReport) -> None:
    """The trial table (varying params, metrics, state, duration; the best marked), then the verdict."""
    out.print(Text(f"{report.run.flow_name} · {report.run.name}", style="bold"), soft_wrap=True)
    names = metric_names(report.trials)
    table = Table()
    table.add_column("Trial", justify="right")
    table.add_column("Experiment" if report.saved else "Flow run")
    for label in report.varying:
        table.add_column(label, justify="right")
    for name in names:
        table.add_column(f"{name} {BEST_MARK}" if name == report.metric else name, justify="right")
    table.add_column("State")
    table.add_column("Duration", justify="right")
    for trial in report.trials:
        marked = trial.index == report.best
        cells = [f"{trial.index}{f' {BEST_MARK}' if marked else ''}", trial.name or "—"]
        cells += [short(trial.values.get(label, "")) for label in report.varying]
        # From the trial itself, not from `table_rows`, whose fixed columns a metric may be named like.
        cells += [display_value(metric_cell(trial, name, report.metric)) for name in names]
        table.add_row(
            *cells,
            Text(trial.state, style=STATE_STYLES.get(trial.state, "")),
            seconds(trial.seconds) if trial.seconds else "—",
            style="bold" if marked else "",
        )
    out.print(table)
    for trial in report.trials:
        if trial.message and trial.state == "Failed":
            out.print(Text(f"trial {trial.index}: ", style="bold red") + Text(trial.message), soft_wrap=True)
    if report.best is not None and report.metric:
        best = report.trials[report.best - 1]
        how = "highest" if report.maximize else "lowest"
        line = (
            f"Best: trial {best.index} ({how} {report.metric} = {display_value(best.metrics[report.metric])})"
        )
        if report.search is not None:
            line += " with " + ", ".join(
                f"{label}={short(best.values.get(label, ''))}" for label in report.varying
            )
        if report.applied:
            line += f"; applied to the workspace (`dvc exp apply {report.applied}`)"
        elif report.saved:
            line += f"; restore it with `dvc exp apply {best.name}`"
        out.print(line, soft_wrap=True)
    elif report.metric and any(trial.completed for trial in report.trials):
        out.print(Text(f"No completed trial reports the metric {report.metric!r}.", style="yellow"))
    pruned = [trial for trial in report.trials if trial.state == "Pruned"]
    if pruned:
        steps = ", ".join(f"trial {trial.index} after {trial.steps} steps" for trial in pruned)
        out.print(Text(f"Pruned: {steps}", style="magenta"), soft_wrap=True)
    for note in report.notes:
        out.print(Text(f"Warning: {note}", style="yellow"), soft_wrap=True)
    record = report.run
    if record.message:  # its first line: the lines after it repeat the failed trials' own, shown above
        out.print(
            Text(record.message.splitlines()[0], style=STATE_STYLES.get(record.state, "")), soft_wrap=True
        )
    verdict(record)


def sweep_json(report: SweepReport) -> None:
    as_json(
        {
            "flow_run": {"id": report.run.id, "name": report.run.name, "state": report.run.state},
            "metric": report.metric,
            "maximize": report.maximize,
            "best": report.best,
            "applied": report.applied,
            "notes": list(report.notes),
            "trials": [
                {**row, **({"message": trial.message} if trial.message else {})}
                for row, trial in zip(
                    table_rows(report.trials, report.varying, report.best), report.trials, strict=True
                )
            ],
            "ui_link": report.run.ui_link,
        }
    )
