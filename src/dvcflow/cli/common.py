"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from dvcflow.core.selection import Selection

RepoOption = Annotated[
    Path | None,
    typer.Option(
        "--repo",
        help="The DVC repository (default: the one containing the current directory).",
        show_default=False,
    ),
]
EphemeralOption = Annotated[
    bool,
    typer.Option(
        "--ephemeral",
        help="Use Prefect's temporary per-process server instead of dvcflow's local server "
        "(or set DVCFLOW_EPHEMERAL=1).",
        rich_help_panel="Prefect API",
    ),
]


def debug_requested() -> bool:
    """`--debug` (or DVCFLOW_DEBUG=1), as the root command read it once for this invocation."""
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get("dvcflow.debug"))


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]

# `dvc repro`'s selection arguments, declared once for run-a, run-b and plan (see `dvcflow.core.selection`).
TargetsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        help="Stages to reproduce, as `dvc repro` takes them (`train`, `sub/dvc.yaml:train`, "
        "`data.dvc`); default: the whole pipeline.",
        show_default=False,
    ),
]
SingleItemOption = Annotated[
    bool,
    typer.Option(
        "--single-item",
        "-s",
        help="Only the targets, not the stages they depend on.",
        rich_help_panel="Select",
    ),
]
DownstreamOption = Annotated[
    bool,
    typer.Option(
        "--downstream", help="The targets and every stage that depends on them.", rich_help_panel="Select"
    ),
]
GlobOption = Annotated[
    bool,
    typer.Option(
        "--glob", help="Targets are shell-style patterns over stage names.", rich_help_panel="Select"
    ),
]
ForceOption = Annotated[
    bool,
    typer.Option(
        "--force",
        "-f",
        help="Reproduce the selected stages even if DVC finds them up to date.",
        rich_help_panel="Select",
    ),
]


def selection_from(
    targets: list[str] | None, single_item: bool, downstream: bool, glob: bool, force: bool
) -> Selection:
    """The `Selection` the shared options describe (a `UsageError` for contradictions)."""
    from dvcflow.core.selection import Selection

    return Selection(
        tuple(targets or ()), single_item=single_item, downstream=downstream, glob=glob, force=force
    )
