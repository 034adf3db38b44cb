"""TODO docstring."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

# The stage graph and `dvc status`, read in-process once per run.

# What DVC logs for a stage (or a `.dvc` data source) it found up to date.
_SKIPPED_LINE = re.compile(r"^(?:Stage )?'(?P<name>.+)' didn't change, skipping$")


def _address(stage: Any, root_dir: str) -> str:
    """What `dvc repro -s` accepts from the repository root: DVC's own `addressing` is relative to the
    current directory, which need not be the root."""
    from dvc.dvcfile import PROJECT_FILE
    from dvc.stage import PipelineStage

    path = Path(os.path.relpath(stage.path, root_dir)).as_posix()
    if isinstance(stage, PipelineStage):
        return stage.name if path == PROJECT_FILE else f"{path}:{stage.name}"
    return path


def _files(changes: dict[str, Any], shown: int = 3) -> str:
    items = [
        f"{path} ({', '.join(f'{key} {how}' for key, how in what.items())})"
        if isinstance(what, dict)
        else f"{path} ({what})"
        for path, what in changes.items()
    ]
    more = f" +{len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _status_reason(entries: list[Any]) -> str:
    """One line from `dvc status`'s entries for a stage: `changed deps: raw.txt (modified)`."""
    parts: list[str] = []
    for entry in entries:
        if isinstance(entry, dict):
            parts.extend(f"{what}: {_files(changes)}" for what, changes in entry.items())
        else:
            parts.append(str(entry))
    return "; ".join(parts) or "changed"
