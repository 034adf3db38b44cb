"""`dvcflow plan`: the waves of stages and which would run, without running anything."""

from __future__ import annotations

from dvcflow.cli.common import JsonOption, RepoOption


def plan(repo: RepoOption = None, json: JsonOption = False) -> None:
    """Show the stage waves of the DVC pipeline and which stages `run-a --per-stage` would reproduce.

    DVC's graph and one `dvc status`; nothing runs and Prefect is not contacted.

    Example: dvcflow plan --json
    """
    from dvcflow import runner
    from dvcflow.render.plan import plan_view

    plan_view(runner.plan_stages(repo), json=json)
