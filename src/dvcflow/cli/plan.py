"""`dvcflow plan`: the waves of stages and which would run, without running anything."""

from typing import Annotated

import typer

from dvcflow.cli.common import (
    DownstreamOption,
    ForceOption,
    GlobOption,
    JsonOption,
    RepoOption,
    SingleItemOption,
    TargetsArgument,
)


def plan(
    targets: TargetsArgument = None,
    repo: RepoOption = None,
    single_item: SingleItemOption = False,
    downstream: DownstreamOption = False,
    glob: GlobOption = False,
    force: ForceOption = False,
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

    plan = Pipeline(repo).plan(
        *targets or (), single_item=single_item, downstream=downstream, glob=glob, force=force
    )
    plan_view(plan, json=json, mermaid=mermaid)
