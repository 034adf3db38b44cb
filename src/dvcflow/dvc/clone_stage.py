"""One stage in a clone on a machine that does not share the caller's disk (a Dask worker), and its result
written back into the caller's workspace (docs/remote.md).

Worker side, `run_in_clone`: a worktree of this worker's clone at the caller's commit (`gitsource.checkout`),
reused by later stages of that commit on this worker (one slot per stage running at once), with the caller's
current `dvc.lock` in it; the stage's missing dependencies pulled from the DVC remote; `dvc repro
--single-item STAGE`; `dvc push STAGE`; its `dvc.lock` entry and its uncached outputs sent back. A sweep's
trial in a clone starts from the same worktree (`prepared_clone`: the caller's `dvc.lock`, the credentials).

Caller side: `write_lock` (the entries into `dvc.lock` in `dvc repro`'s order, so the file is what `dvc repro`
writes) and `bring_outputs` (the uncached outputs written, the cached ones pulled: `dvc pull STAGES`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dvcflow.core.clones import CloneResult, CloneSource
from dvcflow.core.errors import PipelineError
from dvcflow.dvc import gitsource, remote_data, repository

LOCK_FILE = "dvc.lock"
SLOTS = 64  # worktrees of one commit on one worker: more stages than this at once wait for one


@contextlib.contextmanager
def worktree_slot(source: CloneSource) -> Iterator[Path]:
    """A worktree of `source` for this stage alone, kept for the next stage of the same commit on this
    worker: the first free of `<commit>-<n>` (an flock each), reset to the commit (tracked files only: the
    outputs left by earlier stages stay, DVC checks them by hash)."""
    folder = gitsource.clone_with(source.url, source.commit).parent / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(SLOTS):
        name = f"{source.commit[:12]}-{slot}"
        handle = open(folder / f"{name}.lock", "a")  # noqa: SIM115 - closed below
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            root = gitsource.checkout(source.url, source.commit, source.subdir, name=name)
            gitsource.reset(root, source.commit)
            yield root
            return
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
    raise PipelineError(f"more than {SLOTS} stages of one commit at once on this worker")


@contextlib.contextmanager
def prepared_clone(
    source: CloneSource, lock_text: str | None, environ: Mapping[str, str] | None = None
) -> Iterator[Path]:
    """A `worktree_slot` of `source` with the caller's `dvc.lock` (`lock_text`; None: none) and the DVC
    remote's credentials from `environ` (default: this process's): what a stage or a sweep trial starts
    from on a worker that does not see the caller's disk."""
    with worktree_slot(source) as root:
        lock = root / LOCK_FILE
        if lock_text is None:
            lock.unlink(missing_ok=True)
        else:
            lock.write_text(lock_text, encoding="utf-8")
        remote_data.apply_credentials(root, os.environ if environ is None else environ)
        yield root


def run_in_clone(
    source: CloneSource,
    stage: str,
    deps: Sequence[str],
    lock_text: str | None,
    *,
    force: bool,
    log: Callable[[str], None],
    environ: Mapping[str, str] | None = None,
) -> CloneResult:
    """Reproduce `stage` in a worktree at the caller's commit, with `lock_text` as its `dvc.lock` and its
    dependencies (`deps`, paths from the DVC root) pulled from the DVC remote when missing; push its
    outputs; its entry and uncached outputs."""
    seconds: dict[str, float] = {}
    started = time.monotonic()

    def lap(name: str) -> None:
        nonlocal started
        now = time.monotonic()
        seconds[name] = round(now - started, 3)
        started = now

    with prepared_clone(source, lock_text, environ) as root:
        lap("checkout")
        missing = [dep for dep in deps if not (root / dep).exists()]
        if missing:
            _dvc(root, ["pull", *missing], log)
        lap("pull")
        ran: list[str] = []
        _dvc(root, ["repro", "--single-item", *(["--force"] if force else []), stage], _noting(ran, log))
        lap("run")
        _dvc(root, ["push", stage], log)
        lap("push")
        entry, uncached = _recorded(root, stage)
    return CloneResult(stage, entry, uncached, bool(ran), socket.gethostname(), seconds)


def _noting(ran: list[str], log: Callable[[str], None]) -> Callable[[str], None]:
    def on_line(line: str) -> None:
        if line.startswith("Running stage "):
            ran.append(line)
        log(line)

    return on_line


def _dvc(root: Path, args: list[str], log: Callable[[str], None]) -> None:
    from dvcflow.dvc.commands import failure, stream_dvc

    result = stream_dvc(args, cwd=root, on_line=log)
    if not result.ok:
        raise failure(result)


def _recorded(root: Path, stage: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The stage's `dvc.lock` entry and its outputs DVC does not cache (they do not travel by `dvc push`)."""
    import yaml

    entries = (yaml.safe_load((root / LOCK_FILE).read_text(encoding="utf-8")) or {}).get("stages") or {}
    if stage not in entries:
        raise PipelineError(f"stage {stage!r} has no entry in {LOCK_FILE} after it ran (a nested dvc.yaml?)")
    repo: Any = repository.open_repo(root)
    try:
        with repository.in_repository(root):
            (found,) = repo.stage.collect(stage)
            paths = [Path(out.fs_path) for out in found.outs if not out.use_cache]
    finally:
        repo.close()
    uncached = {path.relative_to(root).as_posix(): path.read_bytes() for path in paths if path.is_file()}
    return dict(entries[stage]), uncached


# --- the caller's side ---------------------------------------------------------------------------


def write_lock(root: Path, results: Sequence[CloneResult], order: Sequence[str]) -> None:
    """The stages' entries into `root`'s `dvc.lock` as `dvc repro` writes them: entries already in the file
    keep their place, new ones follow in `order` (`dvc repro`'s), whatever order the stages finished in."""
    if not results:
        return
    from dvc.utils.serialize import modify_yaml

    path = root / LOCK_FILE
    with modify_yaml(str(path)) as data:
        if not data:
            data.update({"schema": "2.0"})
        entries = data.get("stages") or {}
        known = {key: position for position, key in enumerate(entries)}
        position = {name: index for index, name in enumerate(order)}
        for result in results:
            entries[result.stage] = result.entry
        rank = {key: known.get(key, len(known) + position.get(key, len(entries))) for key in entries}
        data["stages"] = {key: entries[key] for key in sorted(entries, key=rank.__getitem__)}


def bring_outputs(root: Path, results: Sequence[CloneResult], log: Callable[[str], None]) -> None:
    """The stages' outputs into `root`: uncached ones written as the clones sent them, cached ones pulled
    from the DVC remote (`dvc pull STAGES`, after `write_lock`)."""
    for result in results:
        for relative, content in result.uncached.items():
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    if results:
        _dvc(root, ["pull", *(result.stage for result in results)], log)


def lock_text(root: Path, results: Sequence[CloneResult], order: Sequence[str]) -> str | None:
    """What `root`'s `dvc.lock` would hold with these entries written (`write_lock`), without writing it:
    what a stage's clone starts from. None without a lock file and entries."""
    import shutil
    import tempfile

    path = root / LOCK_FILE
    if not results:
        return path.read_text(encoding="utf-8") if path.is_file() else None
    with tempfile.TemporaryDirectory(prefix="dvcflow-lock-") as scratch:
        if path.is_file():
            shutil.copy2(path, Path(scratch) / LOCK_FILE)
        write_lock(Path(scratch), results, order)
        return (Path(scratch) / LOCK_FILE).read_text(encoding="utf-8")


def check_clone_source(root: Path) -> gitsource.GitSource:
    """What clones of the caller will run: HEAD on the git remote, no uncommitted change to the pipeline's
    files but `dvc.lock` (which travels with each stage), a DVC default remote."""
    files = gitsource.pipeline_files(root) - {LOCK_FILE}
    source = gitsource.check_source(root, files)
    remote_data.default_remote(root)
    return source
