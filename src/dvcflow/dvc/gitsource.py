"""git carries the code to machines that do not share this disk: the commit a deployment (or a Dask stage)
runs, checked here, and a worker's own clone of it.

Caller side, before anything is registered:
- `check_source`: the repository's git remote, HEAD, and no uncommitted change to a file the pipeline
  depends on (refused, naming the files: a worker runs a commit, never a working tree); no side effect.
- `publish`: a HEAD the remote lacks is pushed to `refs/dvcflow/deploy/<name>` (never a branch), so a
  worker can fetch it; a remote that refuses the push is one error line.

Worker side:
- `checkout`: one clone per repository and worker (`DVCFLOW_CLONES`, default `~/.cache/dvcflow/clones`),
  fetched only when it lacks the commit; each run works in a fresh `git worktree` of it at the commit, and
  every worktree of a repository shares one DVC cache there, so data pulled once stays on the worker.
- `remove_checkout`: the run's worktree goes when the run ends.

Why uncommitted changes are refused rather than shipped on a temporary ref: a deployment outlives the
command (schedules, the UI's Run button), so a temporary commit would have to outlive it too; and the
experiment a run saves hangs under the commit it ran, which must be one the caller has in their history
for `dvcflow fetch` / `dvc exp apply` to bring it home.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dvcflow.core.errors import ConfigError, PipelineError

DEPLOY_REF_PREFIX = "refs/dvcflow/deploy/"
CLONES_ENV = "DVCFLOW_CLONES"  # where a worker keeps its clones (default ~/.cache/dvcflow/clones)
GIT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class GitSource:
    """Where a worker finds the code: `url` at `commit`, the DVC root at `subdir` inside it."""

    remote: str  # the git remote's name here ("origin")
    url: str  # what a worker clones
    commit: str
    subdir: str  # the DVC root's folder in the git work tree, POSIX, "." when they are one
    on_remote: bool  # the remote has the commit already (else `publish` pushes it)

    @property
    def short(self) -> str:
        return self.commit[:9]


def _git(
    cwd: Path, *args: str, check: bool = True, timeout: float = GIT_TIMEOUT_S, strip: bool = True
) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # a remote asking for a password fails, never hangs
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise PipelineError(f"`git {' '.join(args[:2])}` did not finish in {timeout:g} s") from None
    if check and result.returncode != 0:
        raise PipelineError(_said(result.stderr) or f"`git {' '.join(args[:2])}` failed")
    output = result.stdout.strip() if strip else result.stdout
    return output if check or result.returncode == 0 else ""


def _said(stderr: str) -> str:
    """git's own reason: its last `fatal:`/`error:`/`remote:` line without the prefix, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:  # a push's refused ref: ` ! [remote rejected] A -> B (pre-receive hook declined)`
        refused = re.match(r"^! \[(?:remote )?rejected\].*\((?P<why>.+)\)$", line)
        if refused:
            return refused["why"]
    for line in reversed(lines):
        for prefix in ("fatal:", "error:", "remote: error:", "remote:"):
            if line.startswith(prefix) and line.removeprefix(prefix).strip():
                return line.removeprefix(prefix).strip()
    return lines[-1] if lines else ""


def work_tree(root: Path) -> Path:
    """The git work tree `root` is in; a `ConfigError` when there is none or it has no commit."""
    try:
        top = Path(_git(root, "rev-parse", "--show-toplevel"))
        _git(top, "rev-parse", "--verify", "HEAD^{commit}")
    except PipelineError:
        raise ConfigError(
            f"{root}: not a git repository with a commit; a worker gets the pipeline's code through git",
            hint="`git init`, commit the pipeline, `git remote add origin URL` and push",
        ) from None
    return top


def head(root: Path) -> str:
    return _git(root, "rev-parse", "HEAD")


def git_remote(top: Path) -> str:
    """The remote the current branch tracks, else `origin`, else the only one."""
    remotes = _git(top, "remote").split()
    branch = _git(top, "symbolic-ref", "--quiet", "--short", "HEAD", check=False)
    tracked = _git(top, "config", f"branch.{branch}.remote", check=False) if branch else ""
    for choice in (tracked, "origin"):
        if choice and choice in remotes:
            return choice
    if len(remotes) == 1:
        return remotes[0]
    if not remotes:
        raise ConfigError(
            "no git remote: a worker on another machine clones the repository from one",
            hint="`git remote add origin URL` and `git push -u origin HEAD`",
        )
    raise ConfigError(
        f"several git remotes ({', '.join(remotes)}) and none is 'origin' or the branch's upstream",
        hint="`git branch --set-upstream-to REMOTE/BRANCH` names the one workers clone",
    )


_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^[^/]+@[^/]+:")


def clone_url(top: Path, remote: str) -> str:
    """The remote's URL as a worker can use it: a relative local path made absolute."""
    url = _git(top, "remote", "get-url", remote)
    if _URL_LIKE.match(url) or Path(url).is_absolute():
        return url
    return str((top / url).resolve())


def _on_remote(top: Path, remote: str, url: str, commit: str) -> bool:
    """Whether a ref the remote advertises is, or descends from, `commit` (asked over the network)."""
    try:
        listed = _git(top, "ls-remote", remote, timeout=120)
    except PipelineError as err:
        raise ConfigError(f"git remote {remote!r} ({url}) cannot be read: {err.message}") from None
    shas = {line.split()[0] for line in listed.splitlines() if line.strip()}
    if commit in shas:
        return True
    known = [sha for sha in shas if _has(top, sha)]
    if not known:
        return False
    return _git(top, "rev-list", "-n", "1", commit, "--not", *known) == ""


def _has(top: Path, sha: str) -> bool:
    result = subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=top, capture_output=True)
    return result.returncode == 0


def changed_files(top: Path) -> list[str]:
    """Tracked files changed since HEAD (staged or not) and untracked, not ignored files, from the top."""
    listed = _git(top, "status", "--porcelain", "-z", "--untracked-files=all", "--no-renames", strip=False)
    entries = [entry for entry in listed.split("\0") if entry]
    return sorted({entry[3:] for entry in entries})


def _depends(path: str, pipeline_files: set[str]) -> bool:
    parts = PurePosixPath(path)
    return any(
        parts == PurePosixPath(file) or PurePosixPath(file) in parts.parents for file in pipeline_files
    )


def pipeline_files(root: Path) -> set[str]:
    """What the pipeline depends on, from the DVC root: `dvc.yaml`/`.dvc` files and `dvc.lock`, the DVC
    config, and every stage's dependencies inside the repository (params files and code included)."""
    from dvcflow.dvc.repository import open_repo

    files = {".dvc/config", ".dvcignore"}
    resolved = root.resolve()

    def add(path: str) -> None:
        with contextlib.suppress(ValueError):
            files.add(Path(path).resolve().relative_to(resolved).as_posix())

    repo = open_repo(root)
    try:
        for stage in repo.index.stages:
            add(stage.dvcfile.path)
            if stage.dvcfile.path.endswith(".yaml"):
                add(str(Path(stage.dvcfile.path).with_suffix(".lock")))
            for dep in stage.deps:
                if getattr(dep, "is_in_repo", False):
                    add(dep.fs_path)
    finally:
        repo.close()
    return files


def check_source(root: Path, pipeline_files: set[str]) -> GitSource:
    """What a worker will run: HEAD of this repository on its git remote. Refused (a `ConfigError` naming
    them) when a file the pipeline depends on (`pipeline_files`, from the DVC root) has uncommitted
    changes. Reads the remote (`git ls-remote`), writes nothing."""
    top = work_tree(root)
    subdir = root.resolve().relative_to(top.resolve()).as_posix()
    remote = git_remote(top)
    url = clone_url(top, remote)
    commit = head(top)
    prefix = "" if subdir == "." else subdir + "/"
    in_git = {prefix + file if file != "." else subdir for file in pipeline_files}
    dirty = [path for path in changed_files(top) if _depends(path, in_git)]
    if dirty:
        shown = ", ".join(path.removeprefix(prefix) for path in dirty[:8])
        more = f" and {len(dirty) - 8} more" if len(dirty) > 8 else ""
        raise ConfigError(
            f"uncommitted changes to files the pipeline depends on: {shown}{more}",
            hint=f"commit them: workers run commit {commit[:9]} from {remote!r}, never this working tree",
        )
    return GitSource(remote, url, commit, subdir, _on_remote(top, remote, url, commit))


def deploy_ref(name: str) -> str:
    return DEPLOY_REF_PREFIX + name


def publish(root: Path, source: GitSource, name: str) -> str | None:
    """Push a commit the remote lacks to `refs/dvcflow/deploy/NAME` (replacing that deployment's earlier
    one; no branch moves); the ref pushed, or None when the remote had the commit."""
    if source.on_remote:
        return None
    ref = deploy_ref(name)
    try:
        _git(work_tree(root), "push", "--quiet", source.remote, f"+{source.commit}:{ref}", timeout=300)
    except PipelineError as err:
        raise ConfigError(
            f"git remote {source.remote!r} refused the push of {source.short} to {ref}: {err.message}",
            hint=f"push HEAD yourself (`git push {source.remote} HEAD`), then deploy again",
        ) from None
    return ref


# --- the worker's side ---------------------------------------------------------------------------


def clones_home() -> Path:
    configured = os.environ.get(CLONES_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "dvcflow" / "clones"


def _key(url: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9]+", "-", url.rstrip("/").rsplit("/", 1)[-1]).strip("-")[:40] or "repo"
    return f"{readable}-{hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()[:12]}"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One process at a time changes a repository's clone (runs start concurrently on a worker)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def clone_with(url: str, commit: str, home: Path | None = None) -> Path:
    """This worker's clone of `url` holding `commit` (cloned the first time, fetched when it lacks it)."""
    folder = (home or clones_home()) / _key(url)
    mirror = folder / "repo"
    with _locked(folder):
        if not (mirror / ".git").is_dir():
            shutil.rmtree(mirror, ignore_errors=True)
            try:
                _git(folder, "clone", "--quiet", "--no-checkout", url, str(mirror))
            except PipelineError as err:
                raise ConfigError(f"cannot clone {url}: {err.message}") from None
        if not _has(mirror, commit):
            with contextlib.suppress(PipelineError):
                _git(
                    mirror,
                    "fetch",
                    "--quiet",
                    "origin",
                    "+refs/heads/*:refs/remotes/origin/*",
                    f"+{DEPLOY_REF_PREFIX}*:{DEPLOY_REF_PREFIX}*",
                )
        if not _has(mirror, commit):
            with contextlib.suppress(PipelineError):
                _git(mirror, "fetch", "--quiet", "origin", commit)
        if not _has(mirror, commit):
            raise ConfigError(f"commit {commit[:9]} is not on {url}", hint="push it, then run again")
    return mirror


def checkout(
    url: str, commit: str, subdir: str = ".", *, home: Path | None = None, name: str | None = None
) -> Path:
    """A worktree of this worker's clone at `commit` (folder `name`, or a fresh one), its DVC root (at
    `subdir`) using the repository's DVC cache on this worker; returns the DVC root."""
    mirror = clone_with(url, commit, home)
    folder = mirror.parent
    tree = folder / "runs" / (name or f"{commit[:12]}-{uuid.uuid4().hex[:8]}")
    with _locked(folder):
        if not tree.exists():
            _git(mirror, "worktree", "prune")
            tree.parent.mkdir(parents=True, exist_ok=True)
            _git(mirror, "worktree", "add", "--quiet", "--detach", str(tree), commit)
    root = tree / subdir
    if not (root / ".dvc").is_dir():
        raise ConfigError(f"commit {commit[:9]} of {url} has no DVC repository at {subdir!r}")
    share_cache(root, folder / "dvc-cache")
    return root


def share_cache(root: Path, cache: Path) -> None:
    """`dvc cache dir --local CACHE`, written directly (DVC's own config format and library)."""
    from configobj import ConfigObj

    config = ConfigObj(str(root / ".dvc" / "config.local"))
    config.setdefault("cache", {})["dir"] = str(cache)
    config.write()


def reset(root: Path, commit: str) -> None:
    """A reused worktree back at `commit`: its tracked files as committed (outputs and other ignored or
    untracked files stay)."""
    _git(root, "reset", "--quiet", "--hard", commit)


def remove_checkout(root: Path) -> None:
    """Delete a run's worktree (the one `root` is in) and git's record of it; the clone stays."""
    top = Path(_git(root, "rev-parse", "--show-toplevel", check=False) or root)
    common = _git(top, "rev-parse", "--path-format=absolute", "--git-common-dir", check=False)
    shutil.rmtree(top, ignore_errors=True)
    if common:
        with contextlib.suppress(PipelineError):
            _git(Path(common).parent, "worktree", "prune")


def check_checkout(root: Path, commit: str) -> None:
    """The run's folder is at the commit it was deployed with: a custom run naming another commit fails."""
    here = head(root)
    if here != commit:
        raise ConfigError(
            f"the worker's checkout is at {here[:9]}, not at commit {commit[:9]} the run names",
            hint="runs of a deployment run its commit: `dvcflow deploy` again to run another",
        )
