"""DVC's exceptions about a pipeline it cannot read, as one dvcflow error, worded once.

Why one place: `dvc.yaml` and `dvc.lock` are read by every command (the pre-flight of `run-a`, the session
of `run-b` and `--per-stage`, `plan`, `metrics`), and a definition DVC refuses is the same input error
whichever command met it: exit 3 (`ConfigError`) and one line, never a failed flow run (none was created)
and never DVC's multi-line report. Each caller of DVC that reads the pipeline hands its `DvcException`
here (`unreadable`).
"""

from __future__ import annotations

import re
from pathlib import Path

from dvcflow.core.errors import ConfigError

_NOT_A_DVC_FILE = re.compile(r"^'(?P<path>[^']+)' is not a \.dvc file")


def unreadable(root: Path, err: Exception, what: str = "pipeline") -> ConfigError:
    """`DVC cannot read the <what> of <root> (<why, on one line>)`, for a `DvcException` DVC raised while
    reading `dvc.yaml`, `dvc.lock`, `.dvc` files or the metrics they declare."""
    return ConfigError(f"DVC cannot read the {what} of {root} ({_why(root, err)})")


def _why(root: Path, err: Exception) -> str:
    from dvc.exceptions import CyclicGraphError, OverlappingOutputPathsError
    from dvc.stage.exceptions import StageFileIsNotDvcFileError
    from dvc.utils.strictyaml import YAMLSyntaxError, YAMLValidationError

    if isinstance(err, YAMLValidationError):
        return _validation(err)
    if isinstance(err, YAMLSyntaxError):
        return _syntax(err)
    if isinstance(err, OverlappingOutputPathsError):
        parent, inner = err.parent, err.overlapping_out
        return (
            f"output {str(inner)!r} of stage {inner.stage.addressing} is inside output {str(parent)!r} of "
            f"stage {parent.stage.addressing}: track them in separate directories, or individually"
        )
    if isinstance(err, CyclicGraphError):
        named = ", ".join(sorted(str(err).rpartition(": ")[2].rstrip(".").split(", ")))
        return f"the stages {named} depend on each other's outputs in a cycle"
    if isinstance(err, StageFileIsNotDvcFileError):
        match = _NOT_A_DVC_FILE.match(str(err))
        if match and (root / match["path"]).is_dir():
            return f"{match['path']} is a directory, not a file"
    return _one_line(str(err))


def _validation(err: object) -> str:
    """`'./dvc.yaml' validation failed: required key not provided at stages.train.cmd` (DVC's first
    complaint; DVC prints them all, with the lines around them)."""
    message = _one_line(str(err))
    problems = getattr(getattr(err, "exc", None), "errors", None) or []
    if not problems:
        return message
    first = problems[0]
    where = ".".join(str(step) for step in getattr(first, "path", []))
    detail = getattr(first, "error_message", None) or str(first)
    return f"{message}: {detail}" + (f" at {where}" if where else "")


def _syntax(err: object) -> str:
    """`unable to read: 'dvc.lock', YAML file structure is corrupted at line 3 (...)`, and the merge
    conflict DVC suspects."""
    message = _one_line(str(err))
    cause = getattr(getattr(err, "exc", None), "__cause__", None)
    mark = getattr(cause, "problem_mark", None)
    if mark is not None:
        problem = getattr(cause, "problem", None) or "syntax error"
        message += f" at line {mark.line + 1} ({problem})"
    if getattr(err, "hint", ""):
        message += "; it has git merge conflict markers: resolve the conflict"
    return message


def _one_line(text: str) -> str:
    return " ".join(text.split())
