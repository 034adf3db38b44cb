"""The repository's git side for `dvcflow deploy --on-change --watch-branch BRANCH`: the commit a remote
branch points at (`remote_head`, `git ls-remote`: nothing fetched), and moving the workspace to such a
commit before a triggered run (`move_to`).

Why `git` as a command, as `core.identity` does: these are a few plumbing calls, and git's own words are
what a refusal should show. Moving never discards work: a workspace with uncommitted changes to tracked
files, on another branch, or with local commits the remote lacks is refused, saying which.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from dvcflow.core.errors import ConfigError, PipelineError, UsageError

GIT_TIMEOUT_S = 120  # a remote over the network may be slow; never forever


@dataclass(frozen=True)
class RemoteBranch:
    remote: str
    branch: str
    commit: str  # where it pointed when checked


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
            env=_quiet_env(),
        )
    except FileNotFoundError:
        raise ConfigError("git is not installed: --watch-branch needs it") from None
    except subprocess.TimeoutExpired:
        raise PipelineError(f"`git {' '.join(args)}` did not answer within {GIT_TIMEOUT_S} s") from None


def _quiet_env() -> dict[str, str]:
    import os

    # Never a password prompt from a background watcher: a remote that needs one fails instead.
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}


def _said(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {result.returncode}"


def remote_of(root: Path, branch: str) -> str:
    """The remote `branch` tracks (`branch.<name>.remote`), else `origin`; a `UsageError` when the
    repository has no such remote."""
    tracked = _git(root, "config", "--get", f"branch.{branch}.remote")
    remote = tracked.stdout.strip() if tracked.returncode == 0 and tracked.stdout.strip() else "origin"
    remotes = _git(root, "remote").stdout.split()
    if remote not in remotes:
        raise UsageError(
            f"--watch-branch {branch}: the repository has no git remote {remote!r}",
            hint="add one with `git remote add origin URL`",
        )
    return remote


def remote_head(root: Path, remote: str, branch: str) -> str | None:
    """The commit `branch` points at on `remote` (None: the remote has no such branch)."""
    result = _git(root, "ls-remote", "--heads", remote, f"refs/heads/{branch}")
    if result.returncode != 0:
        raise PipelineError(f"cannot read branch {branch!r} of remote {remote!r}: {_said(result)}")
    for line in result.stdout.splitlines():
        commit, _, ref = line.partition("\t")
        if ref == f"refs/heads/{branch}":
            return commit
    return None


def check_branch(root: Path, branch: str) -> RemoteBranch:
    """`branch` on the repository's remote, with the commit it points at now; a `UsageError` when the
    remote lacks it or cannot be read."""
    if not branch.strip() or branch.startswith("-"):
        raise UsageError(f"--watch-branch needs a branch name, got {branch!r}")
    remote = remote_of(root, branch)
    try:
        commit = remote_head(root, remote, branch)
    except PipelineError as err:
        raise UsageError(f"--watch-branch {branch}: {err}") from None
    if commit is None:
        raise UsageError(f"--watch-branch {branch}: remote {remote!r} has no branch {branch!r}")
    return RemoteBranch(remote, branch, commit)


def move_to(root: Path, remote: str, branch: str, commit: str) -> str:
    """Bring the workspace to `commit` of `remote`'s `branch` and say what was done; a `PipelineError`,
    nothing changed, when that would lose work.

    On `branch` it fast-forwards (`git merge --ff-only`); on a detached HEAD it checks the commit out
    (a worker's clone); uncommitted changes to tracked files, another branch, or local commits the
    remote lacks are refused.
    """
    head = _git(root, "rev-parse", "HEAD").stdout.strip()
    if head == commit:
        return f"the workspace is at {commit[:12]} already"
    dirty = [
        line[3:] for line in _git(root, "status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    ]
    if dirty:
        shown = ", ".join(dirty[:5]) + (f" (+{len(dirty) - 5} more)" if len(dirty) > 5 else "")
        raise PipelineError(
            f"the workspace has uncommitted changes ({shown}): not moving it to {branch} at {commit[:12]}; "
            f"commit or stash them, and the next commit pushed to {branch} moves it"
        )
    fetched = _git(root, "fetch", "--quiet", remote, f"refs/heads/{branch}")
    if fetched.returncode != 0 and _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        raise PipelineError(f"cannot fetch {branch!r} from {remote!r}: {_said(fetched)}")
    current = _git(root, "symbolic-ref", "--short", "-q", "HEAD").stdout.strip()
    if current == branch:
        moved = _git(root, "merge", "--ff-only", "--quiet", commit)
        what = f"fast-forwarded {branch} to {commit[:12]}"
    elif not current:
        moved = _git(root, "checkout", "--quiet", "--detach", commit)
        what = f"checked out {commit[:12]} ({remote}/{branch})"
    else:
        raise PipelineError(
            f"the workspace is on branch {current!r}, not {branch!r}: not moving it to {commit[:12]}"
        )
    if moved.returncode != 0:
        raise PipelineError(f"could not move the workspace to {commit[:12]}: {_said(moved)}")
    return what


def committed_at_head(root: Path, paths: list[str]) -> str | None:
    """HEAD's commit when every one of `paths` is a file git tracks, as HEAD has it (no change in the
    workspace): what a checkout of HEAD leaves behind. None otherwise."""
    if not paths:
        return None
    tracked = _git(root, "ls-files", "--error-unmatch", "--", *paths)
    if tracked.returncode != 0 or _git(root, "status", "--porcelain", "--", *paths).stdout.strip():
        return None
    head = _git(root, "rev-parse", "HEAD")
    return head.stdout.strip() if head.returncode == 0 else None
