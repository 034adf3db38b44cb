"""DVC experiments, for the sweep: `-S` grids, trial workspaces and `dvc exp save`.

Everything here is pinned to DVC 3.67 internals (its Hydra override parser and `apply_overrides`, the
same functions `dvc exp run -S` calls, and `Repo.experiments.save`) and tested against them.

A trial workspace is a `git worktree add --detach` of HEAD, plus the user's uncommitted changes to
tracked files and their untracked (not ignored) files, with its DVC cache pointed at the repository's
cache. Worktrees share the repository's refs, so an experiment saved there lands in the main
repository's `refs/exps`, where `dvc exp show` finds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvcflow.core.errors import ConfigError, PipelineError, UsageError
from dvcflow.dvc import repository

if TYPE_CHECKING:
    from dvcflow.core.metrics import MetricsSnapshot


@dataclass(frozen=True)
class Override:
    """One `-S` value of one trial: `file` and `key` as DVC reads them, `text` as Hydra prints it."""

    file: str
    key: str
    text: str  # "train.C=0.1", what `apply_overrides` takes

    @property
    def value(self) -> str:
        return self.text.partition("=")[2]

    @property
    def label(self) -> str:
        """`train.C`, or `other.yaml:lr` for a params file other than DVC's default."""
        return self.key if self.file == repository.DEFAULT_PARAMS_FILE else f"{self.file}:{self.key}"


def _load_params(path: Path) -> dict[str, Any]:
    from dvc.utils.serialize import LOADERS

    try:
        data = LOADERS[path.suffix.lower()](str(path))  # YAML unless .json, .toml or .py, as in DVC
    except Exception as err:
        raise ConfigError(f"{path}: cannot read it as params ({type(err).__name__})") from None
    return dict(data) if isinstance(data, dict) else {}


def _has_key(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def check_values(root: Path, path_overrides: dict[str, list[str]]) -> None:
    """Each `-S` names an existing file and key, has a value, and a number where the param is one
    (an `interval(...)` of a search is a range of numbers by its grammar)."""
    from dvc.utils.hydra import to_hydra_overrides
    from hydra.errors import OverrideParseException

    for file, texts in path_overrides.items():
        params_path = root / file
        if not params_path.is_file():
            raise UsageError(f"-S {file}:...: no params file {file} in {root}")
        data = _load_params(params_path)
        for text in texts:
            try:
                (parsed,) = to_hydra_overrides([text])
            except OverrideParseException as err:
                first = str(err).splitlines()[0]
                raise UsageError(f"-S {text}: cannot parse the value ({first})") from None
            key = parsed.key_or_group
            if parsed.is_add():
                continue
            current = _has_key(data, key)
            if current is _MISSING:
                raise UsageError(f"-S {text}: {file} has no param {key!r}", hint="add new keys as +KEY=VALUE")
            if parsed.is_delete():
                continue
            if parsed.value() == "":
                raise UsageError(f"-S {text}: empty value list", hint=f"give values, e.g. {key}=1,2")
            if parsed.is_interval_sweep():
                continue
            values = list(parsed.sweep_iterator()) if parsed.is_sweep_override() else [parsed.value()]
            number = isinstance(current, (int, float)) and not isinstance(current, bool)
            for value in values:
                if number and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise UsageError(
                        f"-S {text}: {value!r} is not a number, and {key} is {current!r} in {file}"
                    )


def expand_grid(root: Path, set_params: Sequence[str]) -> tuple[tuple[Override, ...], ...]:
    """The cross product of `-S` values, one tuple of overrides per trial, in DVC's own order.

    Uses DVC's `-S` parsing (`to_path_overrides`, `get_hydra_sweeps`), so `file.yaml:key=a,b`,
    `range(...)` and quoting behave as in `dvc exp run -S ... --queue`.
    """
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps
    from hydra.errors import OverrideParseException

    if not set_params:
        raise UsageError("give at least one -S KEY=VALUES", hint="e.g. dvcflow sweep -S train.C=0.1,1,10")
    path_overrides = to_path_overrides(set_params)
    check_values(root, path_overrides)
    try:
        sweeps = get_hydra_sweeps(path_overrides)
    except (InvalidArgumentError, OverrideParseException) as err:
        raise UsageError(f"-S: {str(err).splitlines()[0]}") from None
    return tuple(
        tuple(
            Override(file, text.lstrip("+~").partition("=")[0], text)
            for file, texts in trial.items()
            for text in texts
        )
        for trial in sweeps
    )


# --- git -----------------------------------------------------------------------------------------


def _git(cwd: Path, *args: str, input_bytes: bytes | None = None) -> bytes:
    result = subprocess.run(["git", *args], cwd=cwd, input=input_bytes, capture_output=True, check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise PipelineError(f"`git {' '.join(args[:2])}` failed in {cwd}: {message[-1] if message else ''}")
    return result.stdout


def git_baseline(root: Path) -> str:
    """HEAD's commit: trials start from it, and their experiments hang under it."""
    try:
        return _git(root, "rev-parse", "--verify", "HEAD^{commit}").decode().strip()
    except PipelineError:
        raise ConfigError(
            f"{root}: a sweep needs a git repository with at least one commit",
            hint="DVC experiments are git commits: `git init`, then commit the pipeline",
        ) from None


def dvc_subdir(root: Path) -> Path:
    """The DVC root's folder inside its git work tree (`.` when they are one): where a trial's DVC root
    is inside its worktree."""
    top = Path(_git(root, "rev-parse", "--show-toplevel").decode().strip())
    return root.resolve().relative_to(top.resolve())


def prune_workspaces(root: Path) -> None:
    """Forget worktrees whose folder is gone (a sweep that was killed before it cleaned up)."""
    _git(root, "worktree", "prune")


@dataclass(frozen=True)
class Workspace:
    folder: Path  # what `remove_workspace` deletes
    root: Path  # the DVC root inside it, where `dvc repro` runs


def cache_dir(root: Path) -> Path:
    """The repository's DVC cache folder, which every trial workspace shares (read once per sweep)."""
    main: Any = repository.open_repo(root)
    try:
        return Path(main.cache.local_cache_dir)
    finally:
        main.close()


def create_workspace(root: Path, folder: Path, baseline: str, cache: Path | None = None) -> Workspace:
    """A detached worktree of `baseline` in `folder`, with the workspace's uncommitted changes, its
    untracked files, the DVC config pointing at the repository's cache (`cache`, or read here), and
    DVC-tracked files checked out from that cache (or copied from the workspace when the cache lacks
    them)."""
    top = Path(_git(root, "rev-parse", "--show-toplevel").decode().strip())
    _git(top, "worktree", "add", "--quiet", "--detach", str(folder), baseline)
    inner = folder / root.relative_to(top)
    diff = _git(top, "diff", "HEAD", "--binary")
    if diff.strip():
        _git(folder, "apply", "--binary", "--whitespace=nowarn", input_bytes=diff)
    untracked = _git(top, "ls-files", "--others", "--exclude-standard", "-z").split(b"\0")
    for name in filter(None, (raw.decode() for raw in untracked)):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(top / name, target, follow_symlinks=False)
    local = root / ".dvc" / "config.local"
    if local.is_file():
        shutil.copy2(local, inner / ".dvc" / "config.local")
    _point_at_cache(inner, cache or cache_dir(root))
    with repository.CWD_LOCK:
        _check_out(root, inner)
    return Workspace(folder, inner)


def _point_at_cache(inner: Path, cache: Path) -> None:
    """`dvc cache dir --local CACHE` in the trial, written directly: no DVC repository to open for it."""
    from configobj import ConfigObj  # DVC's own config format and library

    config = ConfigObj(str(inner / ".dvc" / "config.local"))
    config.setdefault("cache", {})["dir"] = str(cache)
    config.write()


def _check_out(root: Path, inner: Path) -> None:
    import logging

    from dvc.exceptions import CheckoutError, DvcException

    logging.getLogger("dvc_data").setLevel(logging.ERROR)  # files the cache lacks are copied below

    trial: Any = repository.open_repo(inner)
    try:
        with contextlib.suppress(CheckoutError):  # what the cache lacks is copied below
            trial.checkout(allow_missing=True)
        for out in trial.index.outs:
            relative = Path(out.fs_path).relative_to(inner)
            source, target = root / relative, inner / relative
            if out.use_cache and not target.exists() and source.exists():
                if source.is_dir():
                    shutil.copytree(source, target, symlinks=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, target)
    except DvcException as err:
        raise PipelineError(f"DVC cannot prepare the trial workspace {inner} ({err})") from None
    finally:
        trial.close()


def remove_workspace(root: Path, workspace: Workspace) -> None:
    """Delete the worktree and git's record of it; safe to call twice."""
    shutil.rmtree(workspace.folder, ignore_errors=True)
    with contextlib.suppress(PipelineError):  # the folder is gone; git forgets it at the next prune
        prune_workspaces(root)


def apply_params(workspace: Path, overrides: Sequence[Override]) -> None:
    """Write a trial's values into its params files with DVC's own `apply_overrides`, as
    `dvc exp run -S` does, so the files are byte for byte what DVC would write."""
    from dvc.utils.hydra import apply_overrides

    by_file: dict[str, list[str]] = {}
    for override in overrides:
        by_file.setdefault(override.file, []).append(override.text)
    for file, texts in by_file.items():
        apply_overrides(str(workspace / file), texts)


def save_experiment(workspace: Path, name: str) -> str:
    """`dvc exp save -n NAME` in the trial workspace, untracked outputs (such as metrics files with
    `cache: false`) included as `dvc exp run` includes them; returns the experiment's commit.

    DVC's own `Repo.experiments.save`, in this process (a `dvc` process would cost a DVC start-up per
    trial). DVC's experiments code resolves paths against the working directory, so the process moves
    into the workspace while it saves (absolute paths everywhere else in a sweep), holding
    `repository.CWD_LOCK` like every in-process DVC call of a sweep. It runs in a trial's thread, where a
    Ctrl-C (delivered to the main thread) cannot stop it halfway: an experiment is saved whole or not at
    all. One at a time across processes too (trials on Dask workers): every save writes the same
    `refs/exps/exec/*`.
    """
    from dvc.exceptions import DvcException

    top = Path(_git(workspace, "rev-parse", "--show-toplevel").decode().strip())
    untracked = [
        str((top / raw.decode()).relative_to(workspace))
        for raw in _git(top, "ls-files", "--others", "--exclude-standard", "-z").split(b"\0")
        if raw and (top / raw.decode()).is_relative_to(workspace)
    ]
    with repository.in_directory(workspace), _saving(top):
        repo: Any = repository.open_repo(workspace)
        try:
            repo.experiments.save(name=name, include_untracked=untracked or None)
        except DvcException as err:
            raise PipelineError(f"`dvc exp save --name {name}` failed: {err}") from None
        finally:
            repo.close()
    return _git(top, "rev-parse", f"refs/exps/{_baseline_path(top)}/{name}").decode().strip()


def read_trial_metrics(workspace: Path) -> MetricsSnapshot:
    """The trial's metrics read in this process (in the workspace: `repository.in_repository`)."""
    from dvcflow.dvc.metrics_files import read_metrics

    return read_metrics(workspace)


@contextlib.contextmanager
def _saving(top: Path) -> Iterator[None]:
    """An flock in git's common folder (shared by all worktrees), held while one experiment is saved."""
    common = Path(_git(top, "rev-parse", "--git-common-dir").decode().strip())
    with open(top / common / "dvcflow-exp-save.lock", "a") as handle:  # `top /`: git may answer relative
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _baseline_path(top: Path) -> str:
    """`ab/cdef...`: where DVC keeps the experiments of the worktree's HEAD under refs/exps."""
    head = _git(top, "rev-parse", "HEAD").decode().strip()
    return f"{head[:2]}/{head[2:]}"


def save_stopped_experiment(workspace: Path, name: str, why: str) -> str:
    """A trial stopped halfway (pruned) as an experiment `NAME`: its params, the stages `dvc repro`
    finished (their `dvc.lock` entries; their outputs are in the cache already), and its files that git
    would show (a metrics file with `cache: false`, the steps logged so far); returns its commit.

    `dvc exp save` cannot do it: it commits every stage, and the stopped one has no outputs. So the
    experiment is made as DVC makes one: a commit on top of the baseline, under
    `refs/exps/<baseline>/<name>`, where `dvc exp show` lists it and `dvc exp apply` restores it.
    """
    top = Path(_git(workspace, "rev-parse", "--show-toplevel").decode().strip())
    ref = f"refs/exps/{_baseline_path(top)}/{name}"
    with _saving(top):
        _git(top, "add", "--all", "--", ".")
        _git(
            top, *_identity(top), "commit", "--quiet", "--no-verify", "--allow-empty", "-m", f"dvcflow: {why}"
        )
        rev = _git(top, "rev-parse", "HEAD").decode().strip()
        _git(top, "update-ref", ref, rev, "")  # "": only if no experiment has this name
    return rev


def _identity(top: Path) -> tuple[str, ...]:
    """`-c user.name=... -c user.email=...` when git has no identity configured (DVC has its own default)."""
    if subprocess.run(["git", "var", "GIT_COMMITTER_IDENT"], cwd=top, capture_output=True).returncode == 0:
        return ()
    return ("-c", "user.name=dvcflow", "-c", "user.email=dvcflow@localhost")


def apply_experiment(root: Path, name: str, on_line: Callable[[str], None]) -> None:
    """`dvc exp apply NAME` in the user's workspace (a DVC process, its lines to `on_line`)."""
    from dvcflow.dvc.commands import failure, stream_dvc

    result = stream_dvc(["exp", "apply", name], cwd=root, on_line=on_line)
    if not result.ok:
        raise failure(result)
