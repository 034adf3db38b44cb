"""`dvcflow plan`: the waves of stages and which would run, without running anything."""

from __future__ import annotations

from dvcflow.cli.common import RepoOption


def plan(repo: RepoOption = None) -> None:
    """Show the stage waves of the DVC pipeline and which stages would run."""
    from dvcflow.errors import UsageError

    raise UsageError("plan is not implemented yet")
