"""`dvcflow plan`: the waves of stages and which would run, without running anything."""

from typing import TYPE_CHECKING, Annotated

import typer

from dvcflow.cli.common import JsonOption, RepoOption, selection_options

if TYPE_CHECKING:
    from dvcflow.core.selection import Selection


@selection_options
def plan(
    selection: "Selection",
    repo: RepoOption = None,
    json: JsonOption = False,
    mermaid: Annotated[bool, typer.Option("--mermaid", help="Print the DAG as a Mermaid flowchart.")] = False,
) -> None:
    """Show the stage waves of the DVC pipeline and which stages `run-a --per-stage` would reproduce.

    Takes `dvc repro`'s selection arguments. DVC's graph and one `dvc status`; nothing runs and Prefect
    is not contacted.

    Example: dvcflow plan --json; dvcflow plan train --mermaid
    """
    from dvcflow.cli.render.plan import plan_view
    from dvcflow.services.pipeline import Pipeline

    plan = Pipeline(repo).plan(*selection.targets, **selection.flags())
    plan_view(plan, json=json, mermaid=mermaid)
