"""The DVC adapter: the only module that runs or imports DVC.

It finds the repository root, runs DVC commands as subprocesses with their output streamed line by
line, and wraps DVC's failures as `PipelineError`s.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvcflow.datasync import DataSync, StagesReport
from dvcflow.errors import ConfigError, NotADvcRepoError, PipelineError, StageCommandError, UsageError
from dvcflow.selection import Selection
from dvcflow.settings import QUIET_ENV
from dvcflow.stage_graph import PipelineSnapshot, StageGraph, StageKind, StageNode

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


def check_params_files(root: Path) -> None:
    """Fail in milliseconds, before any flow run, on a params file DVC could not read.

    Covers the root `params.yaml` and every file a stage of the root `dvc.yaml` names under `params:`.
    Whether the values make sense is the pipeline's business (its stages validate them).
    """
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
        for entry in body.get("params", []) if isinstance(body, dict) else []:
            if isinstance(entry, dict):
                files.update(str(name) for name in entry if "$" not in str(name))
            elif isinstance(entry, str) and ":" not in entry:
                files.add(DEFAULT_PARAMS_FILE)
    for name in sorted(files):
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


# A SIGKILLed dvcflow must not leave an orphan `dvc repro` behind that races the next run for the same
# stage: on Linux DVC runs in a child (`python -m dvcflow.dvcrepo`, see `_child_main`) that first asks
# the kernel to SIGTERM it when dvcflow dies (PR_SET_PDEATHSIG; `preexec_fn` is not safe in a process
# with threads, as Prefect's is).
PARENT_PID_ENV = "DVCFLOW_PARENT_PID"
METRICS_ENV = "DVCFLOW_DVC_METRICS"  # "1": after success, the child prints the metrics on a marked line
WAIT_ENV = "DVCFLOW_DVC_WAIT"  # "1": the child imports DVC, then waits for a line on stdin to run
_METRICS_MARK = "\x00dvcflow-metrics "


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
_RUNNING_LOCK = threading.Lock()


def interrupt_commands(grace: float = 10.0) -> int:
    """Stop every DVC process `stream_dvc` is running (SIGINT, then harder after `grace` s); the count."""
    with _RUNNING_LOCK:
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


def _streamed(
    args: Sequence[str], cwd: Path, on_line: Callable[[str], None], *, metrics: bool
) -> tuple[CommandResult, str | None]:
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    shown: str | None = None
    process = _claim(args, cwd, metrics) or _spawn(args, cwd, metrics=metrics, wait=False)
    with process:
        assert process.stdout is not None
        with _RUNNING_LOCK:
            _RUNNING.add(process)
        try:
            for raw in process.stdout:
                if raw.startswith(_METRICS_MARK):
                    shown = raw.removeprefix(_METRICS_MARK)
                    continue
                line = raw.rstrip().expandtabs(4)
                if line.strip():
                    tail.append(line)
                    on_line(line)
        except BaseException:  # Ctrl-C, or the task was cancelled: let DVC stop cleanly first
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
        process.wait(timeout=5)
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


def _repo(root: Path) -> object:
    """An in-process DVC repository; DVC's own log lines stay out of dvcflow's output."""
    import logging

    os.environ.update(QUIET_ENV)
    logging.getLogger("dvc").setLevel(logging.ERROR)
    try:
        from dvc.repo import Repo
    except ImportError as err:  # pragma: no cover - dvc is a dependency
        raise PipelineError(f"DVC is not installed in this environment ({err})") from None
    from dvc.exceptions import DvcException

    try:
        return Repo(str(root))
    except DvcException as err:
        raise PipelineError(f"{root}: DVC cannot open this repository ({err})") from None


open_repo = _repo  # for `dvcexp`, the experiments adapter beside this module


MetricsFiles = dict[str, dict[str, object] | str]  # file → its parsed data, or an error message


def metrics_show(root: Path) -> MetricsFiles:
    """The metrics files `dvc.yaml` declares: file → its parsed data, or an error message."""
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


# Per-stage runs: the stage graph and `dvc status` read in-process once, then one `dvc repro -s` per stage.

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
    from dvc.exceptions import DvcException
    from dvc.stage import PipelineStage

    repo: Any = _repo(root)
    try:
        graph = repo.index.graph  # edge (u, v): u depends on v
        names = {stage: _address(stage, repo.root_dir) for stage in graph}
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
            by_addressing = {stage.addressing: names[stage] for stage in graph}  # same cwd as status keys
            for addressing, entries in repo.status().items():
                if addressing in by_addressing:
                    changed[by_addressing[addressing]] = _status_reason(entries)
    except DvcException as err:
        raise PipelineError(f"DVC cannot read the pipeline of {root} ({err})") from None
    finally:
        repo.close()
    return PipelineSnapshot(StageGraph(nodes), changed)


@dataclass(frozen=True)
class StageRun:
    """One `dvc repro -s`: its result, and whether DVC found the stage up to date instead of running it."""

    result: CommandResult
    up_to_date: bool


def repro_stage(root: Path, name: str, on_line: Callable[[str], None]) -> StageRun:
    """`dvc --wait-for-lock repro -s NAME`: exactly this stage, if DVC says it changed.

    DVC releases its repository lock while a stage's command runs and takes it again to write
    `dvc.lock`; without `--wait-for-lock` a parallel stage could finish its command and then fail
    to record it after ~3 s of retries.
    """
    skipped = False

    def watch(line: str) -> None:
        nonlocal skipped
        match = _SKIPPED_LINE.match(line.strip())
        if match and match["name"] == name:
            skipped = True
        on_line(line)

    result = stream_dvc(["--wait-for-lock", "repro", "--single-item", name], cwd=root, on_line=watch)
    return StageRun(result, up_to_date=result.ok and skipped)


def _collect(repo: Any, selection: Selection) -> list[Any]:
    """The DVC stages `dvc repro` visits for `selection`, upstream first (DVC's own collect and plan)."""
    from dvc.dvcfile import PROJECT_FILE
    from dvc.exceptions import NoOutputOrStageError
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro
    from dvc.stage.exceptions import StageFileDoesNotExistError, StageNotFound

    targets = list(selection.targets) or [PROJECT_FILE]
    try:
        # DVC resolves targets against the working directory; dvcflow runs `dvc repro` in the root.
        # (The CLI reads the repository before any thread starts, so changing directory here is safe.)
        with contextlib.chdir(repo.root_dir):
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


def check_repro_inputs(root: Path, selection: Selection, sync: DataSync) -> tuple[str, ...]:
    """Pre-flight of a `dvc repro` run, in one in-process look at the repository: the stages it would
    visit (`selected_stages`), a default remote when `--pull`/`--push` need one, and every `.dvc`-tracked
    source among those stages present, unless DVC may fetch (`--pull`) or skip (`--allow-missing`) it.

    Each problem is one line raised before any flow run: `dvc repro` itself would fail on a missing
    source only after the flow started, the same way on every retry.
    """
    from dvc.exceptions import DvcException
    from dvc.stage import PipelineStage

    repo: Any = _repo(root)
    try:
        stages = _collect(repo, selection)
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

    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != int(os.environ.get(PARENT_PID_ENV, "0")):
            return 143  # dvcflow died before the line above: don't run DVC for nobody
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
