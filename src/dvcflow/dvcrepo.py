"""The DVC adapter: the only module that runs or imports DVC.

It finds the repository root, runs DVC commands as subprocesses with their output streamed line by
line, and wraps DVC's failures as `PipelineError`s.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from dvcflow import tether
from dvcflow.datasync import DataSync, StagesReport
from dvcflow.engine.graph import PipelineSnapshot, StageGraph, StageKind, StageNode
from dvcflow.errors import ConfigError, NotADvcRepoError, PipelineError, StageCommandError, UsageError
from dvcflow.selection import Selection
from dvcflow.settings import QUIET_ENV

TAIL_LINES = 15


def find_repo_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` that holds a `.dvc` directory."""
    origin = (start or Path.cwd()).resolve()
    if not origin.exists():
        raise NotADvcRepoError(f"{origin}: no such directory")
    for folder in (origin, *origin.parents):
        if (folder / ".dvc").is_dir():
            return folder
    raise NotADvcRepoError(
        f"{origin} is not inside a DVC repository (no .dvc directory here or above)",
        hint="run `dvc init`, or pass --repo PATH",
    )


DEFAULT_PARAMS_FILE = "params.yaml"  # DVC's default for a stage's `params:` entries


def params_files(root: Path) -> set[str]:
    """The params files the pipeline reads: the root `params.yaml` (if any) and every file a stage of the
    root `dvc.yaml` names under `params:` (paths from the root)."""
    import yaml

    files = {DEFAULT_PARAMS_FILE} if (root / DEFAULT_PARAMS_FILE).exists() else set()
    try:
        spec = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        spec = {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{root / 'dvc.yaml'}: not valid YAML ({_yaml_where(err)})") from None
    for stage in (spec.get("stages") or {}).values():
        body = stage.get("do", stage) if isinstance(stage, dict) else {}
        if not isinstance(body, dict):
            continue
        wdir = str(body.get("wdir", stage.get("wdir", ".") if isinstance(stage, dict) else "."))
        if "$" in wdir:
            continue
        for entry in body.get("params", []):
            if isinstance(entry, dict):
                names = [str(name) for name in entry if "$" not in str(name)]
            elif isinstance(entry, str) and ":" not in entry:
                names = [DEFAULT_PARAMS_FILE]
            else:
                continue
            files.update(os.path.normpath(os.path.join(wdir, name)) for name in names)
    return files


def check_params_files(root: Path) -> None:
    """Fail in milliseconds, before any flow run, on a params file DVC could not read.

    Covers the root `params.yaml` and every file a stage of the root `dvc.yaml` names under `params:`.
    Whether the values make sense is the pipeline's business (its stages validate them).
    """
    import yaml

    for name in sorted(params_files(root)):
        path = root / name
        if path.suffix not in (".yaml", ".yml"):
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: params file not found (dvc.yaml's stages read it)") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_where(err)})") from None
        if not isinstance(data, dict):
            what = "empty" if data is None else f"a {type(data).__name__}, not a mapping of params"
            raise ConfigError(f"{path}: params file is {what}")


def _yaml_where(err: Exception) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or "syntax error"
    return f"{problem} at line {mark.line + 1}" if mark is not None else str(problem)


def dvc_environment() -> dict[str, str]:
    """The environment DVC and the stage commands run in.

    The interpreter running dvcflow goes first on PATH, so `python` in a stage's `cmd` is the one
    with the project installed, as after `source .venv/bin/activate`.
    """
    env = dict(os.environ)
    env.update(QUIET_ENV)
    env["PYTHONUNBUFFERED"] = "1"  # lines arrive as they are printed, not when a buffer fills
    env[PARENT_PID_ENV] = str(os.getpid())
    bin_dir = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:
        env["PATH"] = os.pathsep.join([bin_dir, path]) if path else bin_dir
    return env


# A SIGKILLed dvcflow must not leave an orphan `dvc repro` (or its stage's command) behind that races
# the next run for the same stage: DVC runs in a child (`python -m dvcflow.dvcrepo`, see `_child_main`)
# that first ties itself and its process group to dvcflow (`tether`; `preexec_fn` is not safe in a
# process with threads, as Prefect's is).
PARENT_PID_ENV = "DVCFLOW_PARENT_PID"
METRICS_ENV = "DVCFLOW_DVC_METRICS"  # "1": after success, the child prints the metrics on a marked line
WAIT_ENV = "DVCFLOW_DVC_WAIT"  # "1": the child imports DVC, then waits for a line on stdin to run
_METRICS_MARK = "\x00dvcflow-metrics "
READY_MARK = "\x00dvcflow-ready\n"  # a waiting child has imported DVC (not shown as output)


def dvc_command(*args: str) -> list[str]:
    """DVC from this interpreter, not whichever `dvc` comes first on PATH."""
    return [sys.executable, "-m", "dvcflow.dvcrepo", *args]


@dataclass(frozen=True)
class CommandResult:
    args: tuple[str, ...]
    returncode: int
    tail: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# The DVC processes running now, so a Ctrl-C caught in the main thread can stop those that worker
# threads started (a signal sent to dvcflow alone does not reach them).
_RUNNING: set[subprocess.Popen[str]] = set()
# Re-entrant: a SIGINT handler (`runner._ctrl_c_ends_at_once`) calls `interrupt_commands` in the main
# thread, which may be inside `_pump` holding this lock at that moment.
_RUNNING_LOCK = threading.RLock()


# Set by `interrupt_commands`: the command is ending, so a DVC process or stage command that starts
# later (a stage still preparing, a retry) is stopped as soon as it starts, and no retry is attempted.
_INTERRUPTED = threading.Event()


def interrupted() -> bool:
    """Whether `interrupt_commands` was called (since `clear_interrupted`)."""
    return _INTERRUPTED.is_set()


def clear_interrupted() -> None:
    """Forget an earlier interrupt: for a process that goes on to run something else (tests, a library)."""
    _INTERRUPTED.clear()


def interrupt_commands(grace: float = 10.0) -> int:
    """Stop every DVC process `stream_dvc` is running (SIGINT, then harder after `grace` s), and any that
    starts from now on; the count of those running now."""
    with _RUNNING_LOCK:
        _INTERRUPTED.set()
        running = list(_RUNNING)
    stoppers = [threading.Thread(target=_stop, args=(process, grace)) for process in running]
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join()
    return len(running)


_WarmKey = tuple[str, tuple[str, ...], bool]
_warm: dict[_WarmKey, subprocess.Popen[str]] = {}


def _spawn(args: Sequence[str], cwd: Path, *, metrics: bool, wait: bool) -> subprocess.Popen[str]:
    env = dvc_environment()
    if metrics:
        env[METRICS_ENV] = "1"
    if wait:
        env[WAIT_ENV] = "1"
    return subprocess.Popen(
        dvc_command(*args),
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if wait else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        process_group=0 if os.name == "posix" else None,  # see `_signal`
    )


def warm_up(args: Sequence[str], cwd: Path, *, metrics: bool = False) -> None:
    """Start the interpreter and DVC's import for a `dvc ARGS` about to be asked for, so that they
    overlap with Prefect's import (2 cores: ~0.4 s off a run). It runs nothing until `stream_dvc`
    (or `repro`) asks for the same command; unclaimed, it exits when this process does."""
    key = (str(cwd), tuple(args), metrics)
    if key not in _warm:
        _warm[key] = _spawn(args, cwd, metrics=metrics, wait=True)


def _claim(args: Sequence[str], cwd: Path, metrics: bool) -> subprocess.Popen[str] | None:
    process = _warm.pop((str(cwd), tuple(args), metrics), None)
    if process is None or process.stdin is None:
        return None
    try:
        process.stdin.write("run\n")
        process.stdin.close()
    except OSError:  # it died while waiting: start afresh
        process.wait()
        return None
    return process


def stream_dvc(args: Sequence[str], cwd: Path, on_line: Callable[[str], None]) -> CommandResult:
    """Run `dvc ARGS` in `cwd`, handing every non-blank output line to `on_line` as it arrives."""
    return _streamed(args, cwd, on_line, metrics=False)[0]


def stream_process(
    command: Sequence[str], cwd: Path, env: dict[str, str], on_line: Callable[[str], None]
) -> tuple[int, tuple[str, ...]]:
    """Run any `command` (a stage's `cmd`) like `stream_dvc` runs DVC: every non-blank output line to
    `on_line` as it arrives, in a process group of its own that a Ctrl-C reaches; its exit code and last
    lines. On Linux it runs through the `tether` shim, so it and its children die with dvcflow."""
    argv = tether.shim_command(list(command)) if sys.platform.startswith("linux") else list(command)
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        process_group=0 if os.name == "posix" else None,  # see `_signal`
    )
    result, _ = _pump(process, tuple(command), on_line)
    return result.returncode, result.tail


def _streamed(
    args: Sequence[str], cwd: Path, on_line: Callable[[str], None], *, metrics: bool
) -> tuple[CommandResult, str | None]:
    process = _claim(args, cwd, metrics) or _spawn(args, cwd, metrics=metrics, wait=False)
    return _pump(process, tuple(args), on_line)


def _pump(
    process: subprocess.Popen[str], args: tuple[str, ...], on_line: Callable[[str], None]
) -> tuple[CommandResult, str | None]:
    """Stream a started process's lines to `on_line` (a metrics line aside); stop it if interrupted."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    shown: str | None = None
    with process:
        assert process.stdout is not None
        with _RUNNING_LOCK:
            _RUNNING.add(process)
            late = _INTERRUPTED.is_set()
        try:
            if late:  # started after a Ctrl-C: stopped at once, as those running then were
                _stop(process)
            for raw in process.stdout:
                if raw == READY_MARK:
                    continue
                if raw.startswith(_METRICS_MARK):
                    shown = raw.removeprefix(_METRICS_MARK)
                    continue
                line = raw.rstrip().expandtabs(4)
                if line.strip():
                    tail.append(line)
                    on_line(line)
        except BaseException:  # Ctrl-C, or the task was cancelled: let it stop cleanly first
            _stop(process)
            raise
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(process)
        returncode = process.wait()
    return CommandResult(tuple(args), returncode, tuple(tail)), shown


def _signal(process: subprocess.Popen[str], sig: int) -> None:
    """Signal DVC and the stage command it runs, as a terminal's Ctrl-C signals the foreground group.

    DVC ignores SIGINT while a stage's command runs and leaves stopping to the command, which a
    terminal signals too; DVC runs in a process group of its own so dvcflow can do the same (also for
    DVC processes started from worker threads, which a Ctrl-C caught by dvcflow would not reach).
    """
    with contextlib.suppress(ProcessLookupError):
        if os.name == "posix":
            os.killpg(process.pid, sig)
        else:  # pragma: no cover - dvcflow runs on Linux and macOS
            process.send_signal(sig)


TERM_WAIT_S = 5.0  # after SIGTERM, how long `_stop` waits before SIGKILL


def _stop(process: subprocess.Popen[str], grace: float = 10.0) -> None:
    """SIGINT first, as a terminal's Ctrl-C would, so DVC never dies halfway through writing dvc.lock."""
    if process.poll() is not None:
        return
    _signal(process, signal.SIGINT)
    try:
        process.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        _signal(process, signal.SIGTERM)
    try:
        process.wait(timeout=TERM_WAIT_S)
    except subprocess.TimeoutExpired:
        _signal(process, signal.SIGKILL)
        process.wait()


# DVC's ERROR lines for failures a second attempt may not repeat: a stage's command exited non-zero
# (`StageCmdFailedError`), or another DVC process held the repository lock (`LockError`). Anything else
# (missing data, an invalid dvc.yaml, an unknown target) fails the same way every time.
_RETRYABLE = re.compile(r"failed to run: |Unable to acquire lock|is busy|exited with -?\d+")


def failure(result: CommandResult) -> PipelineError:
    """A readable error from a failed DVC command: DVC's own ERROR line first, then its last lines.

    A `StageCommandError` (worth a retry) when a stage's command failed; a `PipelineError` otherwise.
    """
    errors = [line for line in result.tail if line.startswith("ERROR:")]
    headline = errors[-1].removeprefix("ERROR:").strip() if errors else f"exit code {result.returncode}"
    shown = "\n".join(f"  {line}" for line in result.tail[-8:])
    kind = StageCommandError if not errors or _RETRYABLE.search(headline) else PipelineError
    return kind(f"`dvc {' '.join(result.args)}` failed: {headline}\n{shown}")


CWD_LOCK = threading.RLock()
"""The process's working directory is one for all threads: every code that changes it, or runs DVC code that
reads it, holds this lock (`in_directory`, `in_repository`) — sessions of sweep trials, in-process stage
functions, experiment saves."""


@contextlib.contextmanager
def in_directory(path: Path) -> Iterator[None]:
    """Inside `path` for the block, holding `CWD_LOCK`; the previous directory restored after it."""
    with CWD_LOCK, contextlib.chdir(path):
        yield


@contextlib.contextmanager
def in_repository(root: Path) -> Iterator[None]:
    """Where DVC calls about `root` run, holding `CWD_LOCK`: the working directory if it is inside `root`
    (DVC shows paths relative to it, as `dvc` run there does), else `root` itself (DVC resolves some paths
    against the working directory and refuses those outside the repository: a run started with --repo from
    elsewhere, a sweep trial's workspace, a Dask worker)."""
    with CWD_LOCK:
        cwd, real = os.getcwd(), _real(root)  # the kernel's cwd has no symlinks left
        if cwd == real or cwd.startswith(real.rstrip(os.sep) + os.sep):
            yield
        else:
            with contextlib.chdir(root):
                yield


@functools.lru_cache(maxsize=64)
def _real(root: Path) -> str:
    """`root` without symlinks (asked before each DVC call of a session: `in_repository`)."""
    return str(root.resolve())


def _repo(root: Path) -> object:
    """An in-process DVC repository; DVC's own log lines stay out of dvcflow's output."""
    import logging

    os.environ.update(QUIET_ENV)
    try:
        from dvc.repo import Repo
    except ImportError as err:  # pragma: no cover - dvc is a dependency
        raise PipelineError(f"DVC is not installed in this environment ({err})") from None
    from dvc.exceptions import DvcException

    logging.getLogger("dvc").setLevel(logging.ERROR)  # after the import: importing DVC sets it to INFO

    try:
        return Repo(str(root))
    except DvcException as err:
        raise PipelineError(f"{root}: DVC cannot open this repository ({err})") from None


open_repo = _repo  # for `dvcexp`, the experiments adapter beside this module


MetricsFiles = dict[str, dict[str, object] | str]  # file → its parsed data, or an error message


def metrics_show(root: Path) -> MetricsFiles:
    """The metrics files `dvc.yaml` declares: file → its parsed data, or an error message."""
    with in_repository(root):
        repo = _repo(root)
        try:
            return _metrics_files(repo, root)
        finally:
            repo.close()  # type: ignore[attr-defined]


def _metrics_files(repo: Any, root: Path) -> MetricsFiles:
    from dvc.exceptions import DvcException

    try:
        shown = repo.metrics.show()
    except DvcException as err:
        raise PipelineError(f"DVC cannot read the metrics of {root} ({err})") from None
    workspace = shown.get("", {})
    if "error" in workspace:  # dvc.yaml itself could not be read
        raise PipelineError(f"DVC cannot read the metrics of {root} ({_problem(workspace['error'])})")
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
    if isinstance(error, FileNotFoundError):
        return "no such file"
    return f"{type(error).__name__}: {error}" if isinstance(error, Exception) else str(error)


def _compare(root: Path, rev: str, kind: str) -> DvcDiff:
    """The working tree against git revision `rev`; `kind` is "metrics" or "params"."""
    from dvc.exceptions import DvcException
    from dvc.scm import NoSCMError, RevError

    from dvcflow.errors import MetricsError

    repo = _repo(root)
    try:
        if repo.scm.no_commits:  # type: ignore[attr-defined]
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
        repo.close()  # type: ignore[attr-defined]
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


def read_pipeline(root: Path, *, with_status: bool = True) -> PipelineSnapshot:
    """The stage graph (all `dvc.yaml` stages, `foreach`/`matrix` items and `.dvc` files) and, with
    `with_status`, what `dvc status` reports: one in-process call instead of a process per stage.

    Like `dvc repro`, a frozen stage is cut off from its upstream stages.
    """
    with PipelineSession(root) as session:
        return session.snapshot(with_status=with_status)


# The stage engine's view of DVC: one in-process repository for a whole run. Every DVC call happens under
# the session's mutex and DVC's repository lock (`lock_repo`), held only for the moment of the call;
# stage commands run outside it, in parallel. DVC internals used here (pinned to DVC 3.67, tested in
# tests/test_engine.py): `Repo.index.graph`, `lock_repo`, `Stage.changed/remove_outs/save/save_deps/
# commit/checkout/reproduce/dump`, `stage_cache.restore`, `serialize.to_lockfile`, `modify_yaml`,
# `dvc.stage.run.prepare_kwargs/_make_cmd/get_executable`.


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
            self._repo: Any = _repo(root)
        self._mutex = threading.RLock()
        self._graph: Any = None
        self._stages: dict[str, Any] = {}
        self._lock_order: dict[str, int] = {}  # lock-file key → position in `dvc repro`'s order
        self._lock_keys_at_start: dict[str, list[str]] = {}  # lock file → its stage keys when opened
        self._before_run: dict[str, list[tuple[Any, Any, Any]]] = {}  # stage → (dep/out, hash, meta)
        self._selected: dict[Selection, tuple[str, ...]] = {}  # `select`'s answers (DVC parses dvc.yaml)
        self._kept: dict[str, Any] = {}  # DVC's caches carried over its lock's resets (`_locked`)
        self._load()

    def _load(self) -> None:
        from dvc.exceptions import DvcException

        try:
            with self._locked():
                self._graph = self._repo.index.graph
                self._stages = {_address(stage, self._repo.root_dir): stage for stage in self._graph}
        except DvcException as err:
            raise PipelineError(f"DVC cannot read the pipeline of {self.root} ({err})") from None

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
        one-line `PipelineError`, and nothing stays held.

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
                raise PipelineError(
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
                            changed[by_addressing[addressing]] = _status_reason(entries)
            except DvcException as err:
                raise PipelineError(f"DVC cannot read the status of {self.root} ({err})") from None
        return PipelineSnapshot(StageGraph(nodes), changed)

    def select(self, selection: Selection) -> tuple[str, ...]:
        """The stages `dvc repro` would visit for `selection`, in its order (`_collect`); remembered as the
        order in which new `dvc.lock` entries are written (so the file is byte-identical to `dvc repro`'s)."""
        from dvc.dvcfile import PROJECT_FILE
        from dvc.exceptions import DvcException

        if selection in self._selected:  # the pre-flight asked already (`collect`); the flow asks again
            return self._selected[selection]
        if selection.everything and not (self.root / PROJECT_FILE).exists():
            names = tuple(self._stages)  # no root dvc.yaml (e.g. only sub/dvc.yaml): every stage
            self._remember_lock_order(names)
            self._selected[selection] = names
            return names
        try:
            self.collect(selection)
        except DvcException as err:
            raise PipelineError(f"DVC cannot read the pipeline of {self.root} ({err})") from None
        return self._selected[selection]

    def collect(self, selection: Selection) -> list[Any]:
        """DVC's own stage objects for `selection` (`_collect`: DVC parses dvc.yaml again), their names
        remembered for `select`. Raises DVC's errors."""
        with self._locked():
            steps = _collect(self._repo, selection)
        names = tuple(dict.fromkeys(_address(stage, self._repo.root_dir) for stage in steps))
        self._remember_lock_order(names)
        self._selected[selection] = names
        return steps

    def _remember_lock_order(self, names: tuple[str, ...]) -> None:
        import yaml
        from dvc.stage import PipelineStage

        for position, name in enumerate(names):
            stage = self._stages[name]
            if isinstance(stage, PipelineStage):
                lockfile = stage.dvcfile._lockfile
                self._lock_order.setdefault(f"{lockfile.path}\0{stage.name}", position)
                if lockfile.path not in self._lock_keys_at_start:
                    try:
                        data = yaml.safe_load(Path(lockfile.path).read_text(encoding="utf-8")) or {}
                    except FileNotFoundError:
                        data = {}
                    self._lock_keys_at_start[lockfile.path] = list((data.get("stages") or {}).keys())

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
            return _metrics_files(self._repo, self.root)

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
                self._dump(stage)
        return bool(ran)

    def prepare(self, name: str, *, force: bool, check_changed: bool, pull: bool = False) -> Prepared:
        """What `Stage.reproduce` does before the command: skip if unchanged (with `check_changed`),
        remove the outputs unless `persist`, then take the run from DVC's run cache if it has it. With
        `pull` (`dvc repro --pull`), missing deps and the run cache's outputs come from the remote."""
        from dvc.stage.cache import RunCacheNotFoundError
        from dvc.stage.run import _pull_missing_deps

        stage = self._stage(name)
        with self._locked():
            if check_changed and not force and not _changed(stage):
                return Prepared.UP_TO_DATE
            # What `dvc.lock` says until the stage is recorded: a failed run must not leave the saved
            # deps in memory, or a retry would find the stage up to date.
            self._before_run[name] = [
                (entry, entry.hash_info, entry.meta) for entry in stage.deps + stage.outs
            ]
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
                    return Prepared.RESTORED
        return Prepared.READY

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

        stage = self._stage(name)
        with self._mutex:  # the command may have changed what they say: read them again
            self._kept = {key: value for key, value in self._kept.items() if key not in WORKSPACE_CACHES}
        try:
            with self._locked():
                self._save_commit_dump(stage)
                self._before_run.pop(name, None)
                return self._records(stage)
        except PipelineError:
            self.abandon(name)
            raise
        except DvcException as err:
            self.abandon(name)
            raise PipelineError(f"stage '{name}': DVC could not record it ({err})") from None

    def abandon(self, name: str) -> None:
        """The stage failed: forget what `prepare` saved, so its state is `dvc.lock`'s again."""
        with self._mutex:
            for entry, hash_info, meta in self._before_run.pop(name, []):
                entry.hash_info, entry.meta = hash_info, meta

    def recorded_outputs(self, name: str) -> tuple[OutputRecord, ...]:
        """The outputs as `dvc.lock` (or the last `record`) has them."""
        with self._mutex:
            return self._records(self._stage(name))

    def restore(self, name: str, expected: Sequence[OutputRecord]) -> bool:
        """Check out the outputs `dvc.lock` records from the DVC cache, if they are `expected` and the
        cache has them; True when the workspace then holds them."""
        from dvc.exceptions import DvcException

        stage = self._stage(name)
        recorded = self._records(stage)
        if [(r.path, r.md5) for r in recorded] != [(e.path, e.md5) for e in expected]:
            return False
        try:
            with self._locked():
                stage.checkout(force=True)
        except (DvcException, OSError):  # not in the DVC cache (a fresh clone): the stage must run
            return False
        return [(r.path, r.md5) for r in self.current_outputs(name)] == [(e.path, e.md5) for e in expected]

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
        self._dump(stage)

    def _dump(self, stage: Any) -> None:
        """`stage.dump(update_pipeline=False)`, except that `dvc.lock` entries new to the file are
        written in `dvc repro`'s order, not in the order parallel stages finished."""
        from dvc.stage import PipelineStage
        from dvc.stage.serialize import to_lockfile
        from dvc.utils.serialize import modify_yaml

        if not isinstance(stage, PipelineStage):
            stage.dump(update_pipeline=False)
            return
        lockfile = stage.dvcfile._lockfile
        before = self._lock_keys_at_start.get(lockfile.path, [])
        with modify_yaml(lockfile.path, fs=self._repo.fs) as data:
            if not data:
                data.update({"schema": "2.0"})
            entries = data.get("stages") or {}
            entries.update(to_lockfile(stage))
            known = {key: position for position, key in enumerate(before)}
            offset = len(known)
            rank = {
                key: known.get(key, offset + self._lock_order.get(f"{lockfile.path}\0{key}", len(entries)))
                for key in entries
            }
            data["stages"] = {key: entries[key] for key in sorted(entries, key=rank.__getitem__)}
        self._repo.scm_context.track_file(lockfile.relpath)


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


def _first_changed(kind: str, stage: Any, entries: Sequence[Any], logger: Any) -> bool:
    """Whether one of a stage's deps or outs changed; the first one's line as `Stage.changed` logs it."""
    for entry in entries:
        status = entry.status()
        if status:
            logger.debug("%s '%s' of %s changed because it is '%s'.", kind, entry, stage, status[str(entry)])
            return True
    return False


def _collect(repo: Any, selection: Selection) -> list[Any]:
    """The DVC stages `dvc repro` visits for `selection`, upstream first (DVC's own collect and plan)."""
    from dvc.dvcfile import PROJECT_FILE
    from dvc.exceptions import NoOutputOrStageError
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro
    from dvc.stage.exceptions import StageFileDoesNotExistError, StageNotFound

    targets = list(selection.targets) or [PROJECT_FILE]
    try:
        # DVC resolves targets against the working directory; dvcflow runs `dvc repro` in the root.
        with in_directory(Path(repo.root_dir)):
            stages = collect_stages(repo, targets, glob=selection.glob)
    except (NoOutputOrStageError, StageNotFound, StageFileDoesNotExistError) as err:
        named = " ".join(selection.targets) or PROJECT_FILE
        raise UsageError(f"unknown target {named!r}: {err}") from None
    if not stages:
        raise UsageError(f"no stage matches {' '.join(selection.targets)!r}")
    if selection.single_item:
        return list(stages)
    return list(plan_repro(get_active_graph(repo.index.graph), stages, downstream=selection.downstream))


def selected_stages(root: Path, selection: Selection) -> tuple[str, ...]:
    """The stages `dvc repro` would visit for `selection`, upstream first, named as `read_pipeline`
    names them.

    Asks DVC's own `collect_stages` and `plan_repro` (as `Repo.reproduce` does), so the set is the one
    `dvc repro` works through for the same arguments. Unknown targets and empty glob matches are a
    `UsageError`, raised before anything runs.
    """
    from dvc.exceptions import DvcException

    repo: Any = _repo(root)
    try:
        return tuple(dict.fromkeys(_address(stage, repo.root_dir) for stage in _collect(repo, selection)))
    except DvcException as err:
        raise PipelineError(f"DVC cannot read the pipeline of {root} ({err})") from None
    finally:
        repo.close()


def check_repro_inputs(
    root: Path, selection: Selection, sync: DataSync, session: PipelineSession | None = None
) -> tuple[str, ...]:
    """Pre-flight of a `dvc repro` run, in one in-process look at the repository: the stages it would
    visit (`selected_stages`), a default remote when `--pull`/`--push` need one, and every `.dvc`-tracked
    source among those stages present, unless DVC may fetch (`--pull`) or skip (`--allow-missing`) it.

    Each problem is one line raised before any flow run: `dvc repro` itself would fail on a missing
    source only after the flow started, the same way on every retry. With `session`, its repository
    (which the run then goes on using) is read instead of opening one.
    """
    from dvc.exceptions import DvcException
    from dvc.stage import PipelineStage

    repo: Any = session._repo if session is not None else _repo(root)
    try:
        stages = session.collect(selection) if session is not None else _collect(repo, selection)
        remote = repo.config["core"].get("remote")
        if sync.needs_remote and not remote:
            flag = "--push" if sync.push else "--pull"
            raise ConfigError(
                f"{flag} needs a DVC remote, and {root} has no default remote",
                hint="add one with `dvc remote add -d NAME URL` (a directory, s3://, ssh://, webdav://...)",
            )
        if not (sync.pull or sync.allow_missing):
            for stage in stages:
                if isinstance(stage, PipelineStage) or not stage.is_data_source:
                    continue
                for out in stage.outs:
                    if not out.exists:
                        raise ConfigError(_missing_source(root, stage.relpath, out.def_path, remote))
        return tuple(dict.fromkeys(_address(stage, repo.root_dir) for stage in stages))
    except DvcException as err:  # an invalid dvc.yaml: bad input, before any flow run
        raise ConfigError(f"DVC cannot read the pipeline of {root} ({err})") from None
    finally:
        if session is None:
            repo.close()


def _missing_source(root: Path, dvc_file: str, path: str, remote: str | None) -> str:
    """One line: which tracked file is missing, and the way out that works in this repository."""
    where = Path(os.path.relpath(root / Path(dvc_file).parent / path, root)).as_posix()
    way_out = (
        f"fetch it from remote {remote!r} with --pull"
        if remote
        else "no DVC remote is configured to fetch it from: restore the file"
    )
    if (root / "src" / "mltoy").is_dir():
        way_out += " (in dvcflow's demo repository `make setup` writes it)"
    return f"{where} is missing (tracked by {dvc_file}): {way_out}"


# What `dvc repro` logs for each stage it visits (see `Stage.reproduce` and `stage.cache`).
_STAGE_LINES = (
    ("ran", re.compile(r"^Running stage '(?P<name>.+)':$")),
    ("skipped", _SKIPPED_LINE),
    ("pulled", re.compile(r"^Pulling data for (?:stage: )?'(?P<name>.+)'$")),
    ("restored", re.compile(r"^Stage '(?P<name>.+)' is cached - skipping run, checking out outputs$")),
)


class StageLog:
    """Reads `dvc repro`'s output line by line and records what happened to each stage.

    The stage names are DVC's `addressing`, which equals `_address` when DVC runs in the repository root.
    """

    def __init__(self) -> None:
        self._seen: dict[str, list[str]] = {kind: [] for kind, _ in _STAGE_LINES}

    def feed(self, line: str) -> None:
        text = line.strip()
        for kind, pattern in _STAGE_LINES:
            match = pattern.match(text)
            if match:
                self._seen[kind].append(match["name"])
                return

    def report(self) -> StagesReport:
        """Each stage once; DVC may log "Pulling data" and then run the stage after all (the remote
        lacked its data): such a stage ran."""
        ran = tuple(dict.fromkeys(self._seen["ran"]))

        def others(kind: str) -> tuple[str, ...]:
            return tuple(name for name in dict.fromkeys(self._seen[kind]) if name not in ran)

        return StagesReport(ran, others("skipped"), others("pulled"), others("restored"))


def push(root: Path, stages: Sequence[str], on_line: Callable[[str], None]) -> CommandResult:
    """`dvc push` of the given stages' outputs (all tracked data when `stages` is empty)."""
    return stream_dvc(["push", *stages], cwd=root, on_line=on_line)


@dataclass(frozen=True)
class ReproRun:
    """A `dvc repro` process, and the metrics that same process read after it succeeded."""

    result: CommandResult
    metrics: MetricsFiles | None  # None: not asked for, the command failed, or DVC could not read them


def repro(root: Path, args: Sequence[str], on_line: Callable[[str], None], *, metrics: bool) -> ReproRun:
    """`dvc ARGS` (a `repro`) streamed like `stream_dvc`; with `metrics`, the DVC process then reads the
    metrics too, which spares the caller a second DVC start-up (~0.7 s) to open the repository again."""
    import json

    result, shown = _streamed(args, root, on_line, metrics=metrics)
    return ReproRun(result, json.loads(shown) if result.ok and shown else None)


def _child_main(argv: list[str]) -> int:
    """`python -m dvcflow.dvcrepo ARGS`: `dvc ARGS` in this process, dying with dvcflow.

    No garbage-collector passes while DVC is imported (~0.1 s); with `WAIT_ENV` it then waits for
    dvcflow's go (see `warm_up`), and with `METRICS_ENV` it reads the metrics once the command
    succeeded, its DVC already imported, and prints them on one marked line.
    """
    import gc

    if not tether.tether(int(os.environ.get(PARENT_PID_ENV, "0"))):
        return 143  # dvcflow died before it could be tied to it: don't run DVC for nobody
    os.environ.pop(PARENT_PID_ENV, None)  # not for the stage commands, nor these two
    waits = os.environ.pop(WAIT_ENV, None) == "1"
    metrics = os.environ.pop(METRICS_ENV, None) == "1"
    gc.disable()
    import dvc.cli.parser  # every command's module
    import dvc.repo.reproduce  # noqa: F401 - imported here, under the paused collector
    from dvc.cli import main

    gc.freeze()
    gc.enable()
    if waits:
        print(READY_MARK, end="", flush=True)
        try:
            if not sys.stdin.readline():
                return 0  # never asked for
        except KeyboardInterrupt:
            return 130
        devnull = os.open(os.devnull, os.O_RDONLY)  # the stage commands read nothing, as before
        os.dup2(devnull, 0)
        os.close(devnull)
    code = int(main(argv) or 0)
    if code == 0 and metrics:
        _print_metrics()
    gc.freeze()  # nothing left for a collection at exit to scan
    return code


def _print_metrics() -> None:
    """Best effort: when DVC cannot read them here, the caller reads them itself and reports why."""
    import json

    from dvc.repo import Repo

    try:
        with Repo(".") as repo:
            files = _metrics_files(repo, Path.cwd())
        line = _METRICS_MARK + json.dumps(files, default=str)
    except Exception:  # the caller falls back to its own read
        return
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
