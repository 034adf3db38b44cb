"""Options shared by several commands, declared once."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
# run-a --per-stage, run-b and sweep, with --dask-address (`dvcflow.services.remote_stages`)
SharedDiskOption = Annotated[
    bool | None,
    typer.Option(
        "--shared-disk/--no-shared-disk",
        help="With --dask-address: the workers see this repository at this path (the fast path), or not: "
        "each stage (or sweep trial) then runs in a clone of this commit, its data through the DVC remote "
        "(default: ask them).",
        show_default=False,
    ),
]

RESOURCE_HELP = (
    "How much there is of a resource the stages declare, repeatable: --resource gpu=2 --resource "
    "mem_gb=32 (default: tool.dvcflow.capacity in pyproject.toml; GPUs: the machine's). "
    "See docs/resources.md."
)
# run-b and sweep (run-a's is in its "Per stage" panel: `dvcflow.cli.run`)
ResourceOption = Annotated[
    list[str] | None,
    typer.Option("--resource", metavar="NAME=AMOUNT", help=RESOURCE_HELP, show_default=False),
]


def capacity_from(values: list[str] | None) -> dict[str, int] | None:
    """The `--resource NAME=AMOUNT` flags as a capacity (None without any); a bad one is a one-line
    usage error."""
    from dvcflow.core.resources import capacity_from_flags

    return capacity_from_flags(values) if values else None


# `dvc repro`'s selection arguments, declared once for run-a, run-b and plan (`selection_options`; see
# `dvcflow.core.selection`).
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


_SELECTION_PARAMETERS = (
    ("targets", TargetsArgument, None),
    ("single_item", SingleItemOption, False),
    ("downstream", DownstreamOption, False),
    ("glob", GlobOption, False),
    ("force", ForceOption, False),
)


def selection_options(command: Callable[..., None]) -> Callable[..., None]:
    """A command that takes `dvc repro`'s selection arguments (TARGETS, -s, --downstream, --glob, -f):
    Typer sees them in place of the command's `selection` parameter, and the command gets the
    `Selection` they describe, built before its body runs (so a contradiction is the first error)."""
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "selection"]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, annotation, default in _SELECTION_PARAMETERS
    ]

    @functools.wraps(command)
    def with_selection(
        targets: list[str] | None = None,
        single_item: bool = False,
        downstream: bool = False,
        glob: bool = False,
        force: bool = False,
        **options: Any,
    ) -> None:
        command(selection=selection_from(targets, single_item, downstream, glob, force), **options)

    parameters = [*shared, *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own)]
    with_selection.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    with_selection.__annotations__ = {p.name: p.annotation for p in parameters}
    return with_selection
