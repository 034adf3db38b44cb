"""DVC's repository opened once for a whole run (`PipelineSession`): the stage engine's view of DVC, for
`run-b`, `run-a --per-stage` and the sweep's trials.

Why in process: opening the repository, parsing dvc.yaml and dvc.lock and hashing deps cost more than
most stage checks, and a `dvc` process per check would pay them each time. Every DVC call happens under
the session's mutex and DVC's repository lock (`lock_repo`), held only for the moment of the call; stage
commands run outside it, in parallel. What it writes (the DVC cache, `dvc.lock` entries in `dvc repro`'s
order) is what `dvc repro` would write.

DVC internals used here (pinned to DVC 3.67, tested in tests/test_engine.py): `Repo.index.graph`,
`lock_repo`, `Stage.changed/remove_outs/save/save_deps/commit/checkout/reproduce/dump`,
`stage_cache.restore`, `serialize.to_lockfile`, `modify_yaml`,
`dvc.stage.run.prepare_kwargs/_make_cmd/get_executable`.

Over 500 lines on purpose: one class around one `Repo` object, whose every method keeps the same two
rules (`_locked` for each DVC call; the caches it carries across DVC's lock, `_keep`), and the value types
it answers with. Split, each part would reach into the other's private state; what stands apart has moved
out (selecting stages: `dvcflow.dvc.targets`; the order of `dvc.lock`: `dvcflow.dvc.lockfile`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from dvcflow.core.errors import DvcBusyError, PipelineError
from dvcflow.core.graph import PipelineSnapshot, StageGraph, StageKind, StageNode
from dvcflow.core.metrics import MetricsFiles
from dvcflow.core.selection import Selection
from dvcflow.core.settings import QUIET_ENV
from dvcflow.dvc.errors import unreadable
from dvcflow.dvc.lockfile import LockOrder
from dvcflow.dvc.metrics_files import repo_metrics
from dvcflow.dvc.repository import in_directory, in_repository, open_repo
from dvcflow.dvc.targets import address, collect


@dataclass(frozen=True)
class OutputRecord:
    """One output as DVC hashed it: the path from the repo root, DVC's md5 (`.dir` for a directory)."""

    path: str
    md5: str | None
    size: int | None = None
    is_dir: bool = False


@dataclass(frozen=True)
class StageSpec:
    """What the executor needs to know about a stage, as plain data."""

    name: str
    commands: tuple[str, ...]
    wdir: Path
    deps: tuple[str, ...]  # paths from the repo root (params files included)
    outs: tuple[str, ...]
    by_dvc: bool  # a `.dvc` source, a frozen stage or an import: DVC's own `reproduce` handles it


@dataclass(frozen=True)
class StageFingerprint:
    """DVC's view of a stage before it runs: its command, its deps' hashes, its params' values."""

    stage: str
    cmd: str
    deps: tuple[tuple[str, str | None], ...]  # (path, md5 or None when missing)
    params: str  # JSON: params file → {key: value}
    outs: tuple[str, ...]


class Prepared(StrEnum):
    """What `PipelineSession.prepare` found."""

    UP_TO_DATE = "up to date"
    """DVC says nothing changed: skipped, as `dvc repro` would."""
    RESTORED = "restored"
    """DVC's run cache had this exact run: outputs checked out from the DVC cache and recorded."""
    READY = "ready"
    """Outputs removed, deps saved: the command is to run now, then `record`."""


def _overlaps(a: str, b: str) -> bool:
    """One path is the other, or inside it."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


KEPT = ("index", "config", "dvcignore")  # `Repo` cached properties a session keeps across DVC's lock


WORKSPACE_CACHES = ("config", "dvcignore")  # of those, what a stage's command could change


class PipelineSession:
    """DVC's repository, opened once for a run; thread-safe (one DVC call at a time, in the repository:
    `in_repository`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with in_repository(root):
            self._repo: Any = open_repo(root)
        self._mutex = threading.RLock()
        self._graph: Any = None
        self._stages: dict[str, Any] = {}
        self._lock_order = LockOrder()  # told the order by `select`; every dvc.lock write goes through it
        self._before_run: dict[str, list[tuple[Any, Any, Any]]] = {}  # stage → (dep/out, hash, meta)
        self._read_deps: dict[str, list[tuple[str, object]]] = {}  # stage → its deps' hashes at `prepare`
        self._selected: dict[Selection, tuple[str, ...]] = {}  # `select`'s answers (DVC parses dvc.yaml)
        self._kept: dict[str, Any] = {}  # DVC's caches carried over its lock's resets (`_locked`)
        # DVC's read-write locks the stages hold (`_hold`): stage → (lock entry, read, written paths), and
        # (read|write, path) → how many stages hold it
        self._held: dict[str, tuple[dict[str, Any], list[str], list[str]]] = {}
        self._held_paths: Counter[tuple[str, str]] = Counter()
        self._load()

    def _load(self) -> None:
        from dvc.exceptions import DvcException

        try:
            with self._locked():
                self._graph = self._repo.index.graph
                self._stages = {address(stage, self._repo.root_dir): stage for stage in self._graph}
        except DvcException as err:
            raise unreadable(self.root, err) from None

    @property
    def repo(self) -> Any:
        """DVC's `Repo` itself, for a read outside the session's calls (the pre-flight,
        `dvcflow.dvc.targets.check_repro_inputs`)."""
        return self._repo

    def __enter__(self) -> PipelineSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with self._mutex:
            self._repo.close()

    def _locked(self) -> Any:
        """The session's mutex, the process's working directory (`in_repository`) and DVC's repository
        lock, for one DVC call. Another DVC process holding the lock beyond DVC's own retries (3 s) is a
        one-line `DvcBusyError`, and nothing stays held.

        DVC drops its caches each time its lock is taken (`Repo._reset`), and rebuilding them (the index:
        dvc.yaml and dvc.lock parsed again; the config; the .dvcignore rules) cost more than the call.
        The session keeps them: its index is the one its stage objects come from, and which it updates
        itself; the config and .dvcignore rules are read again after a stage's command ran (`record`)."""
        from contextlib import ExitStack

        from dvc.lock import LockError
        from dvc.repo import lock_repo

        with ExitStack() as stack:  # closed (all released) if taking any of them fails
            stack.enter_context(self._mutex)
            stack.enter_context(in_repository(self.root))
            try:
                stack.enter_context(lock_repo(self._repo))
            except LockError:
                lock = Path(self._repo.tmp_dir) / "lock"
                raise DvcBusyError(
                    f"another DVC process holds the repository lock of {self.root} ({lock})",
                    hint=f"wait until it ends and run again; if no DVC process runs, remove {lock}",
                ) from None
            self._repo.__dict__.update(self._kept)
            stack.callback(self._keep)  # before the lock's release resets them
            return stack.pop_all()

    def _keep(self) -> None:
        self._kept = {key: self._repo.__dict__[key] for key in KEPT if key in self._repo.__dict__}

    def _stage(self, name: str) -> Any:
        try:
            return self._stages[name]
        except KeyError:
            raise PipelineError(f"no stage {name!r} in {self.root}") from None

    def _upstream(self, stage: Any) -> list[Any]:
        return list(self._graph.successors(stage))

    def _relative(self, fs_path: str) -> str:
        return Path(os.path.relpath(fs_path, self._repo.root_dir)).as_posix()

    # Reading

    def snapshot(self, *, with_status: bool = True) -> PipelineSnapshot:
        """The graph and, with `with_status`, what `dvc status` reports (see `read_pipeline`)."""
        from dvc.exceptions import DvcException
        from dvc.stage import PipelineStage

        graph = self._graph
        names = {stage: name for name, stage in self._stages.items()}
        nodes = tuple(
            StageNode(
                name=names[stage],
                upstream=() if stage.frozen else tuple(sorted(names[up] for up in graph.successors(stage))),
                kind=StageKind.STAGE if isinstance(stage, PipelineStage) else StageKind.DATA_SOURCE,
                cmd=stage.cmd,
                frozen=bool(stage.frozen),
            )
            for stage in sorted(graph, key=names.__getitem__)
        )
        changed: dict[str, str] = {}
        if with_status:
            try:
                with self._locked():
                    by_addressing = {stage.addressing: names[stage] for stage in graph}
                    for addressing, entries in self._repo.status().items():
                        if addressing in by_addressing:
                            changed[by_addressing[addressing]] = status_reason(entries)
            except DvcException as err:
                raise unreadable(self.root, err, "status") from None
        return PipelineSnapshot(StageGraph(nodes), changed)

    def select(self, selection: Selection) -> tuple[str, ...]:
        """The stages `dvc repro` would visit for `selection`, in its order (`targets.collect`); remembered
        as the order in which new `dvc.lock` entries are written (so the file is byte-identical to
        `dvc repro`'s)."""
        from dvc.dvcfile import PROJECT_FILE
        from dvc.exceptions import DvcException

        if selection in self._selected:  # the pre-flight asked already (`collect`); the flow asks again
            return self._selected[selection]
        if selection.everything and not (self.root / PROJECT_FILE).exists():
            names = tuple(self._stages)  # no root dvc.yaml (e.g. only sub/dvc.yaml): every stage
            self._lock_order.remember(self._stages[name] for name in names)
            self._selected[selection] = names
            return names
        try:
            self.collect(selection)
        except DvcException as err:
            raise unreadable(self.root, err) from None
        return self._selected[selection]

    def collect(self, selection: Selection) -> list[Any]:
        """DVC's own stage objects for `selection` (`targets.collect`: DVC parses dvc.yaml again), their
        names remembered for `select`. Raises DVC's errors."""
        with self._locked():
            steps = collect(self._repo, selection)
        names = tuple(dict.fromkeys(address(stage, self._repo.root_dir) for stage in steps))
        self._lock_order.remember(self._stages[name] for name in names)
        self._selected[selection] = names
        return steps

    def spec(self, name: str) -> StageSpec:
        stage = self._stage(name)
        commands = stage.cmd if isinstance(stage.cmd, list) else (stage.cmd or "").splitlines()
        return StageSpec(
            name=name,
            commands=tuple(command for command in commands if command.strip()),
            wdir=Path(stage.wdir),
            deps=tuple(self._relative(dep.fs_path) for dep in stage.deps),
            outs=tuple(self._relative(out.fs_path) for out in stage.outs),
            by_dvc=bool(stage.frozen or not stage.cmd or stage.is_import),
        )

    def changed(self, name: str) -> bool:
        """DVC's own verdict, now (upstream stages may just have rewritten this one's deps).

        `Stage.changed(allow_missing=False)`'s checks, in its order, without the three nested DVC
        read-write locks it takes: each rewrites `.dvc/tmp/rwlock` twice, ten times the cost of the
        checks. They guard paths that another DVC process runs a command on with the repository lock
        released; the checks here hold that repository lock, and only read."""
        with self._locked():
            return _changed(self._stage(name))

    def fingerprint(self, name: str) -> StageFingerprint:
        """The hashes DVC computes for the stage's deps (directories included) and its params' values;
        a missing dep or param is part of the fingerprint, not an error."""
        import json

        from dvc.dependency.param import ParamsDependency

        stage = self._stage(name)
        deps: list[tuple[str, str | None]] = []
        params: dict[str, object] = {}
        with self._locked():
            for dep in stage.deps:
                path = self._relative(dep.fs_path)
                try:
                    value = dep.get_hash().value if dep.exists else None
                except Exception:  # a missing param, an unreadable file: the stage will say why
                    value = None
                if isinstance(dep, ParamsDependency):
                    params[path] = value
                else:
                    deps.append((path, value))
        return StageFingerprint(
            stage=name,
            cmd="\n".join(self.spec(name).commands),
            deps=tuple(deps),
            params=json.dumps(params, sort_keys=True, default=str),
            outs=tuple(self._relative(out.fs_path) for out in stage.outs),
        )

    def current_outputs(self, name: str) -> tuple[OutputRecord, ...]:
        """The outputs as they are on disk now, hashed by DVC (md5 None when missing)."""
        stage = self._stage(name)
        records: list[OutputRecord] = []
        with self._locked():
            for out in stage.outs:
                try:
                    hash_info = out.get_hash() if out.exists else None
                except Exception:
                    hash_info = None
                records.append(
                    OutputRecord(
                        self._relative(out.fs_path),
                        hash_info.value if hash_info else None,
                        is_dir=bool(hash_info and hash_info.isdir),
                    )
                )
        return tuple(records)

    def metrics(self) -> MetricsFiles:
        """What `metrics_show` reads, through this session's repository (its index already loaded)."""
        with self._locked():
            return repo_metrics(self._repo, self.root)

    def declarations(self, names: Sequence[str]) -> dict[str, object]:
        """What each of `names` declares under `meta: {dvcflow: ...}` (resources, mutex groups; read by
        `dvcflow.core.resources.demands_for`), as DVC resolved it: a `foreach`/`matrix` item's `${item}`
        is interpolated. Stages without one are left out."""
        declared: dict[str, object] = {}
        for name in names:
            meta = getattr(self._stage(name), "meta", None)
            if isinstance(meta, dict) and "dvcflow" in meta:
                declared[name] = meta["dvcflow"]
        return declared

    def params_paths(self) -> set[Path]:
        """Every params file a stage reads (resolved paths)."""
        from dvc.dependency.param import ParamsDependency

        return {
            Path(dep.fs_path).resolve()
            for stage in self._stages.values()
            for dep in stage.deps
            if isinstance(dep, ParamsDependency)
        }

    def missing_params(self) -> list[tuple[str, str, str]]:
        """(params file, key, stage) for every declared param the files lack: DVC would fail on them."""
        from dvc.dependency.param import ParamsDependency

        missing: list[tuple[str, str, str]] = []
        with self._locked():
            for name, stage in self._stages.items():
                for dep in stage.deps:
                    if isinstance(dep, ParamsDependency) and dep.exists and dep.params:
                        values = dep.read_params()
                        missing.extend((dep.fs_path, key, name) for key in dep.params if key not in values)
        return missing

    def missing_sources(self, names: Sequence[str]) -> list[tuple[str, str]]:
        """(path, stage) for deps of `names` that are absent and that no stage writes."""
        written = {out.fs_path for stage in self._stages.values() for out in stage.outs if stage.cmd}
        missing: list[tuple[str, str]] = []
        with self._locked():
            for name in names:
                stage = self._stage(name)
                for dep in stage.deps if stage.cmd else stage.outs:
                    if not dep.exists and not any(_overlaps(dep.fs_path, out) for out in written):
                        missing.append((dep.fs_path, name))
        return missing

    # Running

    def reproduce_by_dvc(
        self, name: str, *, force: bool, pull: bool = False, allow_missing: bool = False
    ) -> bool:
        """`.dvc` sources, frozen stages and imports: exactly `dvc repro`'s own step (with `--pull` and
        `--allow-missing` as given). True if it ran."""
        stage = self._stage(name)
        # DVC pulls by addresses relative to the working directory.
        moved = in_directory(Path(self._repo.root_dir)) if pull else contextlib.nullcontext()
        with self._locked(), moved:
            ran = stage.reproduce(
                upstream=self._upstream(stage), force=force, pull=pull, allow_missing=allow_missing
            )
            if ran:
                self._lock_order.dump(stage, self._repo)
        return bool(ran)

    def prepare(self, name: str, *, force: bool, check_changed: bool, pull: bool = False) -> Prepared:
        """What `Stage.reproduce` does before the command: skip if unchanged (with `check_changed`),
        take the stage's DVC locks (`_hold`, kept until `record` or `abandon`), remove the outputs unless
        `persist`, then take the run from DVC's run cache if it has it. With `pull` (`dvc repro --pull`),
        missing deps and the run cache's outputs come from the remote. `DvcBusyError` when another DVC
        process works on the stage's files."""
        from dvc.stage.cache import RunCacheNotFoundError
        from dvc.stage.run import _pull_missing_deps

        stage = self._stage(name)
        with self._locked():
            if check_changed and not force and not _changed(stage):
                return Prepared.UP_TO_DATE
            self._hold(name, stage)
            # What `dvc.lock` says until the stage is recorded: a failed run must not leave the saved
            # deps in memory, or a retry would find the stage up to date.
            self._before_run[name] = [
                (entry, entry.hash_info, entry.meta) for entry in stage.deps + stage.outs
            ]
            try:
                stage.remove_outs(ignore_remove=False, force=False)
                if not force:
                    if pull:
                        with in_directory(Path(self._repo.root_dir)):
                            _pull_missing_deps(stage)
                    try:
                        stage.repo.stage_cache.restore(stage, pull=pull)
                    except RunCacheNotFoundError:
                        stage.save_deps()
                    else:
                        self._save_commit_dump(stage)
                        self._before_run.pop(name, None)
                        self._release(name)
                        return Prepared.RESTORED
                # What the command is about to read: `record` refuses outputs made from other data.
                self._read_deps[name] = self._dep_hashes(stage)
            except BaseException:
                self.abandon(name)
                raise
        return Prepared.READY

    def _dep_hashes(self, stage: Any) -> list[tuple[str, object]]:
        """Each dep's path and the hash DVC computes for it now (its state database answers for files it
        hashed already), None when missing, an error's text when unreadable."""
        hashes: list[tuple[str, object]] = []
        for dep in stage.deps:
            try:
                value: object = dep.get_hash().value if dep.exists else None
            except Exception as err:  # the command (or `record`) will say why
                value = f"unreadable: {err}"
            hashes.append((self._relative(dep.fs_path), value))
        return hashes

    def _check_deps_unchanged(self, name: str, stage: Any) -> None:
        """`PipelineError` when a dep is not what the command was given to read (`prepare`): a file copied
        into a dependency folder while the command ran. Recording would pair these outputs with data they
        were not made from, and a later run would find the stage up to date."""
        read = self._read_deps.pop(name, None)
        if read is None:
            return
        changed = [
            path
            for (path, before), (_, now) in zip(read, self._dep_hashes(stage), strict=True)
            if before != now
        ]
        if changed:
            raise PipelineError(
                f"stage '{name}': {', '.join(changed)} changed while its command ran; not recorded (its "
                "outputs may come from the data as it was before), run it again"
            )

    def _hold(self, name: str, stage: Any) -> None:
        """Take the read-write locks `dvc repro` holds on a stage while its command runs
        (`Stage.reproduce`: its deps read, its outputs written; `.dvc/tmp/rwlock`), under the repository
        lock (`_locked`), until `_release`. Another DVC process that would write those deps, or read or
        write those outputs, meanwhile (a `dvc repro` or `dvc status` of the stage) is refused as "busy",
        as `dvc repro` refuses it; and when another process holds them, this stage is: `DvcBusyError`.

        The lock entry is the process's own (its pid and command line, as DVC's `rwlocked` writes it), so
        DVC's calls in this process (`commit`, `checkout`) pass; parallel stages share it, each path
        released when no stage of the session holds it any more (DVC's `dvc.rwlock` helpers)."""
        from dvc.lock import LockError
        from dvc.rwlock import _acquire_read, _acquire_write, _check_blockers

        read, write = _lock_paths(stage.deps), _lock_paths(stage.outs)
        info = {"pid": os.getpid(), "cmd": " ".join(sys.argv)}
        try:
            with self._lock_file() as lock:
                _check_blockers(self._repo.tmp_dir, lock, info, mode="write", waiters=read + write)
                _check_blockers(self._repo.tmp_dir, lock, info, mode="read", waiters=write)
                _acquire_read(lock, info, read)
                _acquire_write(lock, info, write)
        except LockError as err:
            raise DvcBusyError(
                f"stage '{name}': another DVC process is working on its files ({_one_line(err)})",
                hint="wait until it ends and run again",
            ) from None
        self._held[name] = (info, read, write)
        self._held_paths.update([("read", path) for path in read] + [("write", path) for path in write])

    def _release(self, name: str) -> None:
        """Give back what `_hold` took for the stage (idempotent). A failure to edit DVC's lock file is
        left to DVC: the next DVC process drops the entries of a process that ended."""
        from dvc.exceptions import DvcException
        from dvc.rwlock import _release_read, _release_write

        with self._mutex:
            held = self._held.pop(name, None)
            if held is None:
                return
            info, read, write = held
            self._held_paths.subtract([("read", path) for path in read] + [("write", path) for path in write])
            free = {key for key, count in self._held_paths.items() if count <= 0}
            for key in free:
                del self._held_paths[key]
            if not free:
                return
            try:
                with self._lock_file() as lock:
                    writes = [
                        path for path in write if ("write", path) in free and lock["write"].get(path) == info
                    ]
                    reads = [
                        path for path in read if ("read", path) in free and info in lock["read"].get(path, [])
                    ]
                    _release_write(lock, info, writes)
                    _release_read(lock, info, reads)
            except (DvcException, OSError):
                pass

    def _lock_file(self) -> Any:
        """DVC's `.dvc/tmp/rwlock`, open for an edit (its own file lock held meanwhile)."""
        from dvc.rwlock import _edit_rwlock

        repo = self._repo
        return _edit_rwlock(repo.tmp_dir, repo.fs, repo.config["core"].get("hardlink_lock", False))

    def missing_data_only(self, name: str) -> bool:
        """DVC finds the stage changed, but not with `allow_missing` (its upstream stages as they are
        now): missing data is its only change, what `dvc repro --allow-missing` skips and `--pull`
        fetches (`Stage.reproduce`)."""
        stage = self._stage(name)
        with self._locked():
            return _changed(stage) and not stage.changed(True, self._upstream(stage))

    def pull_run_cache(self, log: Callable[[str], None]) -> None:
        """`dvc repro --pull`'s first step: the default remote's run cache into the local one."""
        from dvc.stage.cache import RunCacheNotSupported

        with self._locked():
            try:
                self._repo.stage_cache.pull(None)
            except RunCacheNotSupported as err:
                log(f"Failed to pull run cache: {err}")

    def pull_stage(self, name: str, log: Callable[[str], None]) -> bool:
        """`dvc repro --pull` for a stage whose only change is missing data: `dvc pull` its outputs and
        check them out. False when DVC cannot check them out (the stage must then run); `PipelineError`
        when the download fails."""
        from dvc.exceptions import CheckoutError, DvcException

        stage = self._stage(name)
        log(f"Pulling data for {stage}")
        try:
            with self._locked(), in_directory(Path(self._repo.root_dir)):
                self._repo.pull(stage.addressing)
                stage.checkout()
        except CheckoutError:
            log(f"Unable to pull data for {stage}")
            return False
        except DvcException as err:
            raise PipelineError(f"stage '{name}': DVC could not pull its data ({err})") from None
        return True

    def command_env(self, name: str) -> tuple[list[list[str]], Path, dict[str, str]]:
        """The stage's commands as DVC would start them (its shell, `-c`), its wdir and environment."""
        from dvc.stage.run import _make_cmd, get_executable, prepare_kwargs

        stage = self._stage(name)
        kwargs = prepare_kwargs(stage)
        env: dict[str, str] = dict(kwargs["env"])
        env.update(QUIET_ENV)
        env["PYTHONUNBUFFERED"] = "1"
        bin_dir = str(Path(sys.executable).parent)
        path = env.get("PATH", "")
        if path.split(os.pathsep)[0] != bin_dir:
            env["PATH"] = os.pathsep.join([bin_dir, path]) if path else bin_dir
        executable = get_executable()
        commands = [_make_cmd(executable, command) for command in self.spec(name).commands]
        return (
            [command if isinstance(command, list) else [command] for command in commands],
            Path(kwargs["cwd"]),
            env,
        )

    def record(self, name: str) -> tuple[OutputRecord, ...]:
        """After the command: hash the outputs, put them in the DVC cache, write `dvc.lock` (in
        `dvc repro`'s order). Raises `PipelineError` when an output is missing."""
        from dvc.exceptions import DvcException
        from dvc.lock import LockError

        stage = self._stage(name)
        with self._mutex:  # the command may have changed what they say: read them again
            self._kept = {key: value for key, value in self._kept.items() if key not in WORKSPACE_CACHES}
        try:
            with self._locked():
                self._check_deps_unchanged(name, stage)
                self._save_commit_dump(stage)
                self._before_run.pop(name, None)
                records = self._records(stage)
        except PipelineError:
            self.abandon(name)
            raise
        except LockError as err:
            self.abandon(name)
            raise DvcBusyError(
                f"stage '{name}': DVC could not record it, another DVC process is working on its files"
                f" ({_one_line(err)})"
            ) from None
        except DvcException as err:
            self.abandon(name)
            raise PipelineError(f"stage '{name}': DVC could not record it ({err})") from None
        self._release(name)
        return records

    def abandon(self, name: str) -> None:
        """The stage failed: forget what `prepare` saved, so its state is `dvc.lock`'s again, and give
        back its DVC locks."""
        with self._mutex:
            for entry, hash_info, meta in self._before_run.pop(name, []):
                entry.hash_info, entry.meta = hash_info, meta
            self._read_deps.pop(name, None)
            self._release(name)

    def recorded_outputs(self, name: str) -> tuple[OutputRecord, ...]:
        """The outputs as `dvc.lock` (or the last `record`) has them."""
        with self._mutex:
            return self._records(self._stage(name))

    def _records(self, stage: Any) -> tuple[OutputRecord, ...]:
        return tuple(
            OutputRecord(
                self._relative(out.fs_path),
                out.hash_info.value if out.hash_info else None,
                out.meta.size if out.meta else None,
                bool(out.hash_info and out.hash_info.isdir),
            )
            for out in stage.outs
        )

    def _save_commit_dump(self, stage: Any) -> None:
        """`Stage.run`'s ending (save with the run cache unless an output is uncached, commit), then
        `dvc repro`'s dump."""
        no_cache_outs = any(not out.use_cache for out in stage.outs if not (out.is_metric or out.is_plot))
        stage.save(allow_missing=False, run_cache=not no_cache_outs)
        stage.commit(allow_missing=False)
        self._lock_order.dump(stage, self._repo)


def _changed(stage: Any) -> bool:
    """`Stage.changed(allow_missing=False)` without its locks (see `PipelineSession.changed`), with the
    debug lines it logs to DVC's logger (`dvc -v`: why a stage changed)."""
    from dvc.stage import logger

    changed = (
        stage.changed_stage()  # logs its own line
        or (not stage.frozen and (stage.is_callback or stage.always_changed))
        or (not stage.frozen and _first_changed("Dependency", stage, stage.deps, logger))
        or _first_changed("Output", stage, stage.outs, logger)
    )
    if changed:
        logger.debug("%s changed.", stage)
    return bool(changed)


def _lock_paths(entries: Sequence[Any]) -> list[str]:
    """The paths DVC's `rwlocked` locks for a stage's deps or outs (not those of other repositories or
    databases, which nothing here writes)."""
    from dvc.dependency.db import AbstractDependency
    from dvc.dependency.repo import RepoDependency

    return [entry.fs_path for entry in entries if not isinstance(entry, RepoDependency | AbstractDependency)]


def _one_line(err: BaseException) -> str:
    """DVC's lock error without its advice paragraph, on one line: `'x' is busy, it is being blocked by:
    (PID 12): dvc repro`."""
    return " ".join(str(err).split("\n\n")[0].split())


def _first_changed(kind: str, stage: Any, entries: Sequence[Any], logger: Any) -> bool:
    """Whether one of a stage's deps or outs changed; the first one's line as `Stage.changed` logs it."""
    for entry in entries:
        status = entry.status()
        if status:
            logger.debug("%s '%s' of %s changed because it is '%s'.", kind, entry, stage, status[str(entry)])
            return True
    return False


def read_pipeline(root: Path, *, with_status: bool = True) -> PipelineSnapshot:
    """The stage graph (all `dvc.yaml` stages, `foreach`/`matrix` items and `.dvc` files) and, with
    `with_status`, what `dvc status` reports: one in-process call instead of a process per stage.

    Like `dvc repro`, a frozen stage is cut off from its upstream stages.
    """
    with PipelineSession(root) as session:
        return session.snapshot(with_status=with_status)


def status_reason(entries: list[Any]) -> str:
    """One line from `dvc status`'s entries for a stage: `changed deps: raw.txt (modified)`."""
    parts: list[str] = []
    for entry in entries:
        if isinstance(entry, dict):
            parts.extend(f"{what}: {_files(changes)}" for what, changes in entry.items())
        else:
            parts.append(str(entry))
    return "; ".join(parts) or "changed"


def _files(changes: dict[str, Any], shown: int = 3) -> str:
    items = [
        f"{path} ({', '.join(f'{key} {how}' for key, how in what.items())})"
        if isinstance(what, dict)
        else f"{path} ({what})"
        for path, what in changes.items()
    ]
    more = f" +{len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
