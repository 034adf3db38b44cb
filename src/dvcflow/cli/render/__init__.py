"""Everything a person reads: Rich tables on stdout, one-line errors on stderr, JSON for scripts.

This package owns the two consoles; its submodules render one kind of thing each
(`runs`, `metrics`, `server`, `plan`). Library code never prints.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from dvcflow.core.errors import DvcflowError

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

STATE_STYLES = {
    "Completed": "green",
    "Cached": "cyan",
    "Failed": "red",
    "Crashed": "red",
    "Cancelled": "yellow",
    "NotReady": "yellow",
    "UpToDate": "cyan",
    "Pulled": "cyan",
    "Pruned": "magenta",
    "Restored": "cyan",
    "NotRun": "yellow",
}


def error(exc: DvcflowError) -> None:
    """One `Error: ...` line (plus an optional `Hint:` line) on stderr."""
    err.print(Text("Error: ", style="bold red") + Text(exc.message), soft_wrap=True)
    if exc.hint:
        err.print(Text(f"Hint: {exc.hint}", style="dim"), soft_wrap=True)


def info(message: str) -> None:
    """Progress notes go to stderr so stdout stays clean for tables and JSON."""
    err.print(Text(message, style="dim"), soft_wrap=True)


def seconds(value: float) -> str:
    return f"{value:.2f}s" if value < 60 else f"{int(value // 60)}m{value % 60:04.1f}s"


def as_json(data: Any) -> None:
    """Plain JSON on stdout (no colour, no wrapping), for scripts; NaN and infinities become null, as
    strict parsers such as `jq` require."""
    print(json.dumps(_strict(data), indent=2, allow_nan=False))


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(item) for item in value]
    return value
