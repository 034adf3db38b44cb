"""Which repository a flow run belongs to: one identity for run tags, metrics artifact keys and notifications.

It must survive what people do to a repository (move it, clone it on another machine) and tell apart two
repositories that share one Prefect server. What a `git clone` keeps is the history, so the identity is:

1. `repo_id` in `[tool.dvcflow]` of the repository's `pyproject.toml`, when set (committed, so it travels
   with clones): the escape hatch for the one case below;
2. else the root commit reached by first parents from HEAD, plus the DVC root's folder inside the git
   work tree (two DVC projects in one monorepo differ). First parents: merging an unrelated history later
   adds a root commit but does not change this one. A move or a clone keeps it; a remote URL would not do,
   since adding or renaming a remote is common and a local clone's `origin` is a path;
3. else (no git, or no commit yet) the resolved path: stable only until the repository moves.

Known limit: a project started by cloning a template repository (and keeping its history) shares the
template's root commit; set `repo_id` in `[tool.dvcflow]` there.
"""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dvcflow.core.errors import ConfigError
from dvcflow.core.settings import pyproject_table

REPO_ID_KEY = "repo_id"
_VALID_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # what Prefect accepts in an artifact key


@dataclass(frozen=True)
class RepoIdentity:
    id: str  # lowercase letters, digits and dashes: usable in tags and artifact keys
    basis: str  # what it was derived from, for `--debug` and the docs


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:12]


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _configured(root: Path) -> str | None:
    """Only the repository's own `pyproject.toml`: a monorepo's would give its DVC projects one identity."""
    if not (root / "pyproject.toml").is_file():
        return None
    value = pyproject_table(root).get(REPO_ID_KEY)
    if value is None:
        return None
    if not isinstance(value, str) or not _VALID_ID.fullmatch(value):
        raise ConfigError(
            f"[tool.dvcflow] {REPO_ID_KEY} must be 1-63 lowercase letters, digits or dashes, got {value!r}"
        )
    return value


@functools.lru_cache(maxsize=16)
def repo_identity(root: Path) -> RepoIdentity:
    """The identity of the DVC repository at `root` (see the module docstring for the rules)."""
    root = root.resolve()
    configured = _configured(root)
    if configured is not None:
        return RepoIdentity(configured, f"[tool.dvcflow] {REPO_ID_KEY}")
    roots = _git(root, "rev-list", "--first-parent", "--max-parents=0", "HEAD")
    toplevel = _git(root, "rev-parse", "--show-toplevel") if roots else None
    if roots and toplevel:
        first_root = roots.split()[0]
        inside = root.relative_to(Path(toplevel).resolve()).as_posix()
        return RepoIdentity(
            _digest(f"{first_root}:{inside}"), f"git root commit {first_root[:12]} + {inside!r}"
        )
    return RepoIdentity(_digest(str(root)), f"path {root} (no git commit yet)")
