"""The pipeline's metrics as DVC reads them (`dvc metrics show`, `dvc metrics diff`, `dvc params diff`),
asked of an in-process `Repo` and turned into dvcflow's own values (`dvcflow.core.metrics`).

In process, not `dvc metrics show` as a command: one DVC start-up fewer (~0.7 s), and DVC's errors come
back as objects to word, not text to parse. A file DVC cannot read is reported beside the others, never
raised: one broken metrics file must not hide the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvcflow.core.errors import ConfigError
from dvcflow.core.metrics import (
    NO_SUCH_FILE,
    Change,
    MetricsDiff,
    MetricsFiles,
    MetricsSnapshot,
    as_number,
    as_scalar,
    require_metrics,
    snapshot_of,
)
from dvcflow.dvc.errors import unreadable
from dvcflow.dvc.repository import in_repository, open_repo


def read_metrics(repo_root: Path) -> MetricsSnapshot:
    """Every metric declared in `dvc.yaml`, flattened; unreadable files are reported, not raised."""
    return snapshot_of(metrics_show(repo_root))


def _changes(raw: DvcDiff) -> tuple[Change, ...]:
    changes = []
    for path in sorted(raw.entries):
        for name, entry in sorted(raw.entries[path].items()):
            old, new = as_scalar(entry.get("old")), as_scalar(entry.get("new"))
            delta = as_number(entry.get("diff"))
            before, after = as_number(old), as_number(new)
            if delta is None and before is not None and after is not None:
                delta = after - before
            changes.append(Change(path, name, old, new, delta))
    return tuple(changes)


def diff_metrics(repo_root: Path, rev: str = "HEAD", *, params: bool = False) -> MetricsDiff:
    """The working tree's metrics (and params) against git revision `rev`, every metric listed."""
    raw = metrics_diff(repo_root, rev)
    metrics = _changes(raw)
    if not any(c.new is not None for c in metrics):
        now = {(path, problem) for revision, path, problem in raw.errors if revision == "workspace" and path}
        require_metrics(MetricsSnapshot((), tuple(sorted(now))), missing="nothing in the working tree")
    raw_params = params_diff(repo_root, rev) if params else None
    return MetricsDiff(
        rev=rev,
        metrics=metrics,
        params=_changes(raw_params) if raw_params is not None else None,
        errors=raw.errors + (raw_params.errors if raw_params is not None else ()),
    )


def metrics_show(root: Path) -> MetricsFiles:
    """The metrics files `dvc.yaml` declares: file → its parsed data, or an error message."""
    with in_repository(root):
        repo = open_repo(root)
        try:
            return repo_metrics(repo, root)
        finally:
            repo.close()


def repo_metrics(repo: Any, root: Path) -> MetricsFiles:
    """`metrics_show` through a `Repo` open already (a session's, or the DVC child's after its `repro`)."""
    from dvc.exceptions import DvcException

    try:
        shown = repo.metrics.show()
    except DvcException as err:
        raise unreadable(root, err, "metrics") from None
    workspace = shown.get("", {})
    if "error" in workspace:  # dvc.yaml itself could not be read
        error = workspace["error"]
        if isinstance(error, DvcException):
            raise unreadable(root, error, "metrics")
        raise ConfigError(f"DVC cannot read the metrics of {root} ({_problem(error)})")
    files: MetricsFiles = {}
    for path, entry in workspace.get("data", {}).items():
        files[path] = _problem(entry["error"]) if "error" in entry else entry.get("data", {})
    return files


@dataclass(frozen=True)
class DvcDiff:
    """`dvc metrics diff` / `dvc params diff` as plain data, unchanged entries included."""

    entries: dict[str, dict[str, dict[str, object]]]  # file → key → {"old", "new", "diff"}
    errors: tuple[tuple[str, str, str], ...]  # (revision, file or "", problem)


def _problem(error: object) -> str:
    from dvc.utils.serialize import ParseError

    if isinstance(error, FileNotFoundError):
        return NO_SUCH_FILE
    if isinstance(error, ParseError):  # DVC's reason, without the path relative to somewhere
        return str(error).partition("', ")[2] or str(error)
    return f"{type(error).__name__}: {error}" if isinstance(error, Exception) else str(error)


def _compare(root: Path, rev: str, kind: str) -> DvcDiff:
    """The working tree against git revision `rev`; `kind` is "metrics" or "params"."""
    from dvc.exceptions import DvcException
    from dvc.scm import NoSCMError, RevError

    from dvcflow.core.errors import MetricsError

    repo = open_repo(root)
    try:
        if repo.scm.no_commits:
            raise MetricsError(
                f"{root}: the git repository has no commits yet, nothing to compare with",
                hint="commit your work first",
            )
        result = getattr(repo, kind).diff(a_rev=rev, all=True)
    except NoSCMError:
        raise MetricsError(
            f"{root} is not a git repository: comparing with a revision needs git",
            hint="run `git init` and commit, or show the current metrics without --diff",
        ) from None
    except RevError:
        raise MetricsError(
            f"unknown git revision {rev!r} in {root}", hint="pass a commit, branch or tag, e.g. HEAD~1"
        ) from None
    except DvcException as err:
        raise MetricsError(f"DVC cannot compare the {kind} of {root} with {rev!r} ({err})") from None
    finally:
        repo.close()
    errors: list[tuple[str, str, str]] = []
    for revision, problem in result.get("errors", {}).items():
        if isinstance(problem, dict):
            errors.extend((revision, path, _problem(error)) for path, error in problem.items())
        else:
            errors.append((revision, "", _problem(problem)))
    return DvcDiff(result.get("diff", {}), tuple(errors))


def metrics_diff(root: Path, rev: str = "HEAD") -> DvcDiff:
    """Like `dvc metrics diff --all REV`: every metric at `rev` and in the working tree."""
    return _compare(root, rev, "metrics")


def params_diff(root: Path, rev: str = "HEAD") -> DvcDiff:
    """Like `dvc params diff --all REV`: every param at `rev` and in the working tree."""
    return _compare(root, rev, "params")
