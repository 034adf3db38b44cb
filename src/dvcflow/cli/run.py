"""`dvcflow run-a` (and later run modes): connect to Prefect, run a flow, render its summary."""

from __future__ import annotations

from typing import Annotated

import typer

from dvcflow.cli.common import EphemeralOption, RepoOption


def run_a(
    repo: RepoOption = None,
    fail_once: Annotated[
        bool,
        typer.Option("--fail-once", help="Fail the `dvc repro` task once to demonstrate retries."),
    ] = False,
    show_metrics: Annotated[
        bool, typer.Option(help="Run the `metrics summary` task after `dvc repro`.")
    ] = True,
    ephemeral: EphemeralOption = False,
) -> None:
    """Option A: DVC owns the DAG; Prefect runs `dvc repro` with logs, retries and run history.

    Example: dvcflow run-a --fail-once
    """
    from dvcflow import render, runner
    from dvcflow.render.runs import run_summary

    record = runner.run_option_a(
        repo,
        fail_once=fail_once,
        show_metrics=show_metrics,
        ephemeral=ephemeral,
        announce=render.info,
    )
    run_summary(record)
    raise typer.Exit(record.exit_code)


def run_b(repo: RepoOption = None, ephemeral: EphemeralOption = False) -> None:
    """Option B: Prefect owns the stage DAG; tasks call the stage functions directly."""
    from dvcflow.errors import UsageError

    raise UsageError("run-b is not implemented yet")
