"""One stage in a clone on a machine that does not share the caller's disk (a Dask worker), and its result
written back into the caller's workspace (docs/remote.md).

Worker side, `run_in_clone`: a worktree of this worker's clone at the caller's commit (`gitsource.checkout`),
reused by later stages of that commit on this worker (one slot per stage running at once), with the caller's
current `dvc.lock` and `.dvc` files in it; the stage's missing dependencies pulled from the DVC remote; `dvc
repro --single-item STAGE`; `dvc push STAGE`; its entry in its `dvc.lock` and its uncached outputs sent back.
A sweep's trial in a clone starts from the same worktree (`prepared_clone`: the caller's `dvc.lock` and
`.dvc` files, the credentials).

Every `dvc.lock` of the pipeline travels, not only the root's: a stage of `sub/dvc.yaml` writes its entry in
`sub/dvc.lock`, and a stage's dependency made by a stage of another `dvc.yaml` is found (and pulled) by that
stage's entry in its own lock file. Every `.dvc` file travels too: the caller verifies a changed data source
itself (`dvc add`'s step) and records its new hash there; with the committed `.dvc` file a clone would pull
the old data and find the stages below up to date. So these files (`sent_files`) are the pipeline files a
caller may leave uncommitted.

Caller side: `write_lock` (the entries into their `dvc.lock` files in `dvc repro`'s order, so each file is
what `dvc repro` writes) and `bring_outputs` (the uncached outputs written, the cached ones pulled: `dvc
pull STAGES`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dvcflow.core.clones import CloneResult, CloneSource
from dvcflow.core.errors import PipelineError
from dvcflow.dvc import gitsource, remote_data, repository

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
    source: CloneSource, locks: str | None, environ: Mapping[str, str] | None = None
) -> Iterator[Path]:
    """A `worktree_slot` of `source` with the caller's `dvc.lock` and `.dvc` files (`locks`, from
    `lock_text`; None: the worktree's own) and the DVC remote's credentials from `environ` (default: this
    process's): what a stage or a sweep trial starts from on a worker that does not see the caller's disk."""
    with worktree_slot(source) as root:
        texts: dict[str, str | None] = json.loads(locks) if locks is not None else {}
        for relative, text in texts.items():
            if text is None:  # the caller has none: neither has the clone (an earlier stage's stays else)
                (root / relative).unlink(missing_ok=True)
            else:
                (root / relative).write_text(text, encoding="utf-8")
        remote_data.apply_credentials(root, os.environ if environ is None else environ)
        yield root


def run_in_clone(
    source: CloneSource,
    stage: str,
    deps: Sequence[str],
    locks: str | None,
    *,
    force: bool,
    log: Callable[[str], None],
    environ: Mapping[str, str] | None = None,
) -> CloneResult:
    """Reproduce `stage` in a worktree at the caller's commit, with `locks` as its `dvc.lock` and `.dvc`
    files (`lock_text`) and its dependencies (`deps`, paths from the DVC root) pulled from the DVC remote when
    missing; push its outputs; its entry and uncached outputs."""
    seconds: dict[str, float] = {}
    started = time.monotonic()

    def lap(name: str) -> None:
        nonlocal started
        now = time.monotonic()
        seconds[name] = round(now - started, 3)
        started = now

    with prepared_clone(source, locks, environ) as root:
        lap("checkout")
        missing = _to_pull(root, deps)
        if missing:
            _dvc(root, ["pull", *missing], log)
        lap("pull")
        ran: list[str] = []
        _dvc(root, ["repro", "--single-item", *(["--force"] if force else []), stage], _noting(ran, log))
        lap("run")
        _dvc(root, ["push", stage], log)
        lap("push")
        lock, key, entry, uncached = _recorded(root, stage)
    return CloneResult(stage, lock, key, entry, uncached, bool(ran), socket.gethostname(), seconds)


def _to_pull(root: Path, deps: Sequence[str]) -> list[str]:
    """The stage's dependencies (from the DVC root) to pull: those not in the worktree, and those DVC
    tracks whose content is not what the caller's `dvc.lock` or `.dvc` files say. The worktree is reused:
    a file an earlier stage or run pulled or wrote there stays, and `dvc repro --single-item` would take an
    old version of it, matching the old entry, for up to date (a `.dvc` source the caller verified since)."""
    from dvc.exceptions import OutputNotFoundError

    absent = [dep for dep in deps if not (root / dep).exists()]
    present = [dep for dep in deps if dep not in absent]
    if not present:
        return absent
    stale: list[str] = []
    repo: Any = repository.open_repo(root)
    try:
        with repository.in_repository(root):
            for dep in present:
                try:
                    outs = repo.find_outs_by_path(str(root / dep), strict=False, recursive=True)
                except OutputNotFoundError:  # in git: the checkout put the commit's version there
                    continue
                if any(out.use_cache and out.changed_checksum() for out in outs):
                    stale.append(dep)
    finally:
        repo.close()
    return absent + stale


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


def _recorded(root: Path, stage: str) -> tuple[str, str, dict[str, Any], dict[str, bytes]]:
    """Where the stage's entry is (its lock file from the DVC root, its key there), the entry, and the
    stage's outputs DVC does not cache (they do not travel by `dvc push`)."""
    import yaml
    from dvc.stage import PipelineStage

    repo: Any = repository.open_repo(root)
    try:
        with repository.in_repository(root):
            (found,) = repo.stage.collect(stage)
            if not isinstance(found, PipelineStage):
                raise PipelineError(f"stage {stage!r} is no dvc.yaml stage: it has no dvc.lock entry to send")
            lock_path = Path(found.dvcfile._lockfile.path)
            lock, key = Path(os.path.relpath(lock_path, repo.root_dir)).as_posix(), found.name
            paths = [Path(out.fs_path) for out in found.outs if not out.use_cache]
    finally:
        repo.close()
    entries = (yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}).get("stages") or {}
    if key not in entries:
        raise PipelineError(f"stage {stage!r} has no entry in {lock} after it ran")
    uncached = {path.relative_to(root).as_posix(): path.read_bytes() for path in paths if path.is_file()}
    return lock, key, dict(entries[key]), uncached


# --- the caller's side ---------------------------------------------------------------------------


def write_lock(root: Path, results: Sequence[CloneResult], order: Sequence[str]) -> None:
    """The stages' entries into `root`'s `dvc.lock` files (each its own: `sub/dvc.lock` for a stage of
    `sub/dvc.yaml`) as `dvc repro` writes them: entries already in a file keep their place, new ones follow
    in `order` (`dvc repro`'s, stages as it names them), whatever order the stages finished in."""
    from dvcflow.dvc.lockfile import write_entries

    by_file: dict[str, list[tuple[int, CloneResult]]] = {}
    for place, result in enumerate(_in_order(results, order)):
        by_file.setdefault(result.lock, []).append((place, result))
    for lock, written in by_file.items():
        write_entries(
            str(root / lock),
            {result.key: result.entry for _, result in written},
            {result.key: place for place, result in written},
        )


def _in_order(results: Sequence[CloneResult], order: Sequence[str]) -> list[CloneResult]:
    """`results` in `order` (`dvc repro`'s), not in the order the stages finished."""
    place = {name: index for index, name in enumerate(order)}
    return sorted(results, key=lambda result: place.get(result.stage, len(place)))


def bring_outputs(
    root: Path, results: Sequence[CloneResult], order: Sequence[str], log: Callable[[str], None]
) -> None:
    """The stages' outputs into `root`: uncached ones written as the clones sent them, cached ones pulled
    from the DVC remote (`dvc pull STAGES`, after `write_lock`), and each in git's ignore list as `dvc
    repro` puts it there (DVC does when it saves an output, which happened in the clone; `dvc pull` does
    not), in `order` (`dvc repro`'s), so a `.gitignore` that several stages write is the same file."""
    if not results:
        return
    ranked = _in_order(results, order)
    for result in ranked:
        for relative, content in result.uncached.items():
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    _dvc(root, ["pull", *(result.stage for result in ranked)], log)
    repo: Any = repository.open_repo(root)
    try:
        with repository.in_repository(root):
            for result in ranked:
                for stage in repo.stage.collect(result.stage):
                    stage.ignore_outs()
    finally:
        repo.close()


def lock_text(
    root: Path,
    results: Sequence[CloneResult],
    order: Sequence[str],
    files: Sequence[str] | None = None,
) -> str:
    """What `root`'s `dvc.lock` and `.dvc` files (`files`, from the DVC root; default: `sent_files(root)`)
    would hold with these entries written (`write_lock`), without writing them: what a stage's (or a
    trial's) clone starts from (`prepared_clone`). One text, as the single `dvc.lock` was (a stage task's
    and a sweep trial's parameter): JSON, file → its text, null for one the caller lacks (the clone drops
    it)."""
    import shutil
    import tempfile

    paths = sorted({*(sent_files(root) if files is None else files), *(result.lock for result in results)})

    def read(folder: Path) -> str:
        return json.dumps({path: _text(folder / path) for path in paths})

    if not results:
        return read(root)
    with tempfile.TemporaryDirectory(prefix="dvcflow-lock-") as scratch:
        for path in paths:
            (Path(scratch) / path).parent.mkdir(parents=True, exist_ok=True)
            if (root / path).is_file():
                shutil.copy2(root / path, Path(scratch) / path)
        write_lock(Path(scratch), results, order)
        return read(Path(scratch))


def _text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def sent_files(root: Path) -> tuple[str, ...]:
    """The pipeline files each clone gets as the caller has them (see the module doc), from the DVC root:
    its `dvc.lock` files (DVC's own, one beside each `dvc.yaml`) and its `.dvc` files."""
    from dvc.stage import PipelineStage

    repo: Any = repository.open_repo(root)
    try:
        paths = {
            Path(
                os.path.relpath(
                    stage.dvcfile._lockfile.path if isinstance(stage, PipelineStage) else stage.dvcfile.path,
                    repo.root_dir,
                )
            ).as_posix()
            for stage in repo.index.stages
        }
    finally:
        repo.close()
    return tuple(sorted(paths))


def check_clone_source(root: Path) -> gitsource.GitSource:
    """What clones of the caller will run: HEAD on the git remote, no uncommitted change to the pipeline's
    files but its `dvc.lock` and `.dvc` files (which travel with each stage: `sent_files`), a DVC default
    remote."""
    files = gitsource.pipeline_files(root) - set(sent_files(root))
    source = gitsource.check_source(root, files)
    remote_data.default_remote(root)
    return source
