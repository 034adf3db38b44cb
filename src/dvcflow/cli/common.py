"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RepoOption = Annotated[
    Path | None,
    typer.Option(
        "--repo",
        help="The DVC repository (default: the one containing the current directory).",
        file_okay=False,
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
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]
