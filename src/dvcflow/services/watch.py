"""Runs that start when something changed: the watchers of `dvcflow deploy --on-change` and `dvcflow watch`.

Provides:
- `check_options`: the flags, refused before anything is read (`--debounce` <= 0 ...);
- `plan`: what to watch in a repository, from DVC (its pipeline's inputs) and git (the remote branch),
  refused before Prefect is contacted when there is nothing to watch or the remote lacks the branch;
- `Watchers`: the watchers of a plan, each in a thread, until stopped; each change becomes one
  `dvcflow.repository.changed` event (`dvcflow.api.events`), which the deployment's trigger turns into
  a run;
- `watch_until_signalled`: `dvcflow watch`, the watchers alone beside a work-pool deployment.

The three watchers:
- files: inotify through watchfiles, over the repository; only the pipeline's inputs count (stage deps no
  stage writes, params files, `.dvc`-tracked data: `core.changes.WatchList`). Changes go into one event
  once none came for `debounce` seconds (a slow copy is one event, sent when it is done), or at the
  latest `max_wait_for(debounce)` after the first;
- a remote branch (`--watch-branch`): `git ls-remote` every `BRANCH_POLL_S` seconds (a remote cannot
  tell us; nothing is fetched); a new commit is an event naming it. The files its run's checkout changes
  are no event of their own (they are as that commit has them: its run reproduces them);
- imports (`--watch-imports INTERVAL`): DVC's own check (`dvc status` of the import stages) every
  INTERVAL seconds, skipped while a run holds the repository's run lock (DVC's lock would make one of
  them fail); an import becoming out of date is an event, once until a run has updated it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvcflow.core.changes import BRANCH, IMPORTS, Change, WatchList
from dvcflow.core.errors import ConfigError, DvcflowError, UsageError
from dvcflow.dvc.branch import RemoteBranch

DEFAULT_DEBOUNCE_S = 2.0
MAX_WAIT_WINDOWS = 30  # a batch that never goes quiet is flushed after this many windows...
MAX_WAIT_MIN_S = 60.0  # ...and no sooner than this (`Debouncer.max_wait`)
BRANCH_POLL_S = 10.0  # how often the remote branch is asked for its commit
READY_MS = 500  # the file watcher says it is in place within this long after its watches are
READY_WAIT_S = 60.0  # at most this long for that (a huge tree takes a while to add watches to)
STOP_JOIN_S = 10.0  # at most this long for a watcher to end once stopped (a `dvc status` in progress)


@dataclass(frozen=True)
class WatchOptions:
    """`--debounce`, `--watch-branch`, `--watch-imports`, checked."""

    debounce: float = DEFAULT_DEBOUNCE_S
    branch: str | None = None
    imports_every: float | None = None

    def flags(self) -> str:
        """The same options as `dvcflow watch` takes them."""
        parts = [] if self.debounce == DEFAULT_DEBOUNCE_S else [f"--debounce {self.debounce:g}"]
        if self.branch is not None:
            parts.append(f"--watch-branch {self.branch}")
        if self.imports_every is not None:
            parts.append(f"--watch-imports {self.imports_every:g}")
        return " ".join(parts)


def check_options(*, debounce: float | None, branch: str | None, imports_every: float | None) -> WatchOptions:
    """Refuse nonsense before the repository is read."""
    if debounce is not None and not debounce > 0:
        raise UsageError(f"--debounce must be more than 0 seconds, got {debounce:g}")
    if imports_every is not None and not imports_every > 0:
        raise UsageError(f"--watch-imports must be more than 0 seconds, got {imports_every:g}")
    if branch is not None and (not branch.strip() or branch.startswith("-")):
        raise UsageError(f"--watch-branch needs a branch name, got {branch!r}")
    return WatchOptions(DEFAULT_DEBOUNCE_S if debounce is None else debounce, branch, imports_every)


@dataclass(frozen=True)
class WatchPlan:
    """What the watchers of one repository watch."""

    root: Path
    options: WatchOptions
    inputs: WatchList
    branch: RemoteBranch | None = None

    def describe(self) -> str:
        """`3 inputs (data, params.yaml, src/train.py), branch origin/main, 1 import every 600 s`."""
        parts = []
        if watched := self.inputs.watched:
            shown = ", ".join(watched[:4]) + (", ..." if len(watched) > 4 else "")
            parts.append(f"{len(watched)} input{'s' if len(watched) != 1 else ''} ({shown})")
        if self.branch is not None:
            parts.append(f"branch {self.branch.remote}/{self.branch.branch} (every {BRANCH_POLL_S:g} s)")
        if self.options.imports_every is not None:
            count = len(self.inputs.imports)
            parts.append(
                f"{count} import{'s' if count != 1 else ''} (every {self.options.imports_every:g} s)"
            )
        return ", ".join(parts)


def plan(root: Path, options: WatchOptions) -> WatchPlan:
    """What to watch in the repository at `root`; a `ConfigError` when its pipeline has nothing to watch,
    a `UsageError` for `--watch-imports` without imports or a branch its remote lacks."""
    from dvcflow.dvc import branch as git_branch
    from dvcflow.dvc.watched import watch_list

    inputs = watch_list(root)
    if not inputs.watched:
        raise ConfigError(
            f"--on-change: the pipeline of {root} has no dependencies to watch "
            "(no stage deps, params files or .dvc-tracked data)",
            hint="list each stage's inputs under `deps:` in dvc.yaml",
        )
    if options.imports_every is not None and not inputs.imports:
        raise UsageError(
            f"--watch-imports: the pipeline of {root} has no `dvc import` or `import-url` stages"
        )
    remote = git_branch.check_branch(root, options.branch) if options.branch is not None else None
    return WatchPlan(root, options, inputs, remote)


class Debouncer:
    """Collects paths until nothing was added for `window` seconds (each add restarts the wait), then
    hands them all to `flush` at once (from a timer thread); the next path opens the next batch. A slow
    copy into a watched folder keeps adding paths, so its run starts once the copy is quiet, not on a
    half-written file. `max_wait` (from the first path) bounds a batch that never goes quiet (a file
    written to without end): it is flushed then anyway."""

    def __init__(
        self, window: float, flush: Callable[[set[str]], None], max_wait: float | None = None
    ) -> None:
        self.window = window
        self.max_wait = max(window, max_wait if max_wait is not None else max_wait_for(window))
        self.flush = flush
        self.lock = threading.Lock()
        self.pending: set[str] = set()
        self.first: float | None = None  # when the batch's first path came (`time.monotonic`)
        self.timer: threading.Timer | None = None
        self.generation = 0  # of the timer that may flush: a timer restarted or cancelled does nothing

    def add(self, paths: set[str]) -> None:
        if not paths:
            return
        with self.lock:
            self.pending |= paths
            now = time.monotonic()
            if self.first is None:
                self.first = now
            if self.timer is not None:
                self.timer.cancel()
            self.generation += 1
            delay = max(0.0, min(self.window, self.first + self.max_wait - now))
            self.timer = threading.Timer(delay, self._fire, args=(self.generation,))
            self.timer.daemon = True
            self.timer.start()

    def _fire(self, generation: int) -> None:
        with self.lock:
            if generation != self.generation:  # restarted by a later add (or cancelled) meanwhile
                return
            paths, self.pending, self.timer, self.first = self.pending, set(), None, None
        if paths:
            self.flush(paths)

    def cancel(self) -> None:
        """Stop: a batch still open sends nothing."""
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
            self.generation += 1
            self.pending, self.timer, self.first = set(), None, None


def max_wait_for(window: float) -> float:
    """How long a batch that never goes quiet is held at most: `MAX_WAIT_WINDOWS` windows, at least
    `MAX_WAIT_MIN_S`."""
    return max(MAX_WAIT_MIN_S, MAX_WAIT_WINDOWS * window)


class Watchers:
    """The watchers of `plan`, each in a daemon thread, from `__enter__` until `__exit__`.

    `send` turns a change into its event and returns the change naming it (`api.events.emit_change`);
    `on_change` then hears of it (the terminal's line), `on_problem` of a check that failed (the watcher
    goes on: a remote or the API may come back).
    """

    def __init__(
        self,
        plan: WatchPlan,
        *,
        send: Callable[[Change], Change],
        on_change: Callable[[Change], None],
        on_problem: Callable[[str], None],
    ) -> None:
        self.plan = plan
        self.send = send
        self.on_change = on_change
        self.on_problem = on_problem
        self.stop = threading.Event()
        self.ready = threading.Event()  # the file watcher's inotify watches are in place
        self.moved_to: set[str] = set()  # the commits the branch watcher reported (a run moves there)
        self.threads = [threading.Thread(target=self._files, name="dvcflow-watch-files", daemon=True)]
        if plan.branch is not None:
            self.threads.append(
                threading.Thread(target=self._branch, name="dvcflow-watch-branch", daemon=True)
            )
        if plan.options.imports_every is not None:
            self.threads.append(
                threading.Thread(target=self._imports, name="dvcflow-watch-imports", daemon=True)
            )

    def __enter__(self) -> Watchers:
        """Start the watchers; returns once the file watcher watches (a change from then on counts)."""
        for thread in self.threads:
            thread.start()
        self.ready.wait(READY_WAIT_S)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=STOP_JOIN_S)

    def _report(self, change: Change) -> None:
        try:
            named = self.send(change)
        except Exception as err:  # the API away for a moment must not end watching
            self.on_problem(f"could not send the change event ({change.summary()}): {err}")
            return
        self.on_change(named)

    def _guarded(self, what: str, check: Callable[[], Any]) -> Any:
        try:
            return check()
        except DvcflowError as err:
            self.on_problem(f"{what}: {err}")
        except Exception as err:  # a watcher thread must not die silently
            self.on_problem(f"{what}: {type(err).__name__}: {err}")
        return None

    def _files(self) -> None:
        from watchfiles import DefaultFilter, watch

        root = self.plan.root
        inputs = self.plan.inputs
        usual = DefaultFilter()  # editors' swap files, __pycache__, .git ...

        def relative(path: str) -> str | None:
            name = os.path.relpath(path, root)
            return None if name.startswith("..") else Path(name).as_posix()

        def counts(change: Any, path: str) -> bool:
            name = relative(path)
            return name is not None and usual(change, path) and inputs.counts(name)

        debouncer = Debouncer(self.plan.options.debounce, self._files_changed)
        try:
            # watchfiles' own grouping (50 ms steps) hands over batches; the debouncer makes one event of
            # every batch in its window. Its inotify watches are in place once it first yields: an empty
            # batch after `rust_timeout` ms without a change that counts.
            for batch in watch(
                root,
                watch_filter=counts,
                stop_event=self.stop,
                raise_interrupt=False,
                rust_timeout=READY_MS,
                yield_on_timeout=True,
            ):
                self.ready.set()
                debouncer.add({name for _, path in batch if (name := relative(path)) is not None})
        except Exception as err:
            self.on_problem(f"the file watcher stopped: {type(err).__name__}: {err}")
        finally:
            self.ready.set()
            debouncer.cancel()

    def _files_changed(self, paths: set[str]) -> None:
        if self.moved_to and self._guarded("files", lambda: self._moved_by_a_run(paths)):
            return
        self._report(Change.of_files(paths))

    def _moved_by_a_run(self, paths: set[str]) -> bool:
        """Whether `paths` changed because a run moved the workspace to a commit this watcher reported
        (each is then as that commit has it): that run reproduces them already."""
        from dvcflow.dvc.branch import committed_at_head

        return committed_at_head(self.plan.root, sorted(paths)) in self.moved_to

    def _branch(self) -> None:
        from dvcflow.dvc.branch import remote_head

        assert self.plan.branch is not None
        remote, branch, last = self.plan.branch.remote, self.plan.branch.branch, self.plan.branch.commit
        while not self.stop.wait(BRANCH_POLL_S):
            commit = self._guarded(
                f"branch {remote}/{branch}", lambda: remote_head(self.plan.root, remote, branch)
            )
            if commit is not None and commit != last:
                last = commit
                self.moved_to.add(commit)
                self._report(Change(BRANCH, branch=branch, remote=remote, commit=commit))

    def _imports(self) -> None:
        assert self.plan.options.imports_every is not None
        reported: set[str] = set()
        while not self.stop.is_set():
            outdated = self._guarded("imports", self._outdated_imports)
            if outdated is not None:
                if new := outdated - reported:
                    self._report(Change(IMPORTS, imports=tuple(sorted(new))))
                reported = outdated
            self.stop.wait(self.plan.options.imports_every)

    def _outdated_imports(self) -> set[str] | None:
        """DVC's check, unless a run holds the repository (None: skipped this time)."""
        from dvcflow.core.errors import PipelineError
        from dvcflow.dvc.watched import outdated_imports
        from dvcflow.proc.runlock import exclusive_run

        entered = False
        try:
            with exclusive_run(self.plan.root, on_wait=lambda _: None, timeout=0):
                entered = True
                return set(outdated_imports(self.plan.root, self.plan.inputs.imports))
        except PipelineError:
            if entered:
                raise
            return None  # a run is in progress: it would meet DVC's lock; the next check comes soon


def watch_until_signalled(
    plan: WatchPlan,
    *,
    on_watching: Callable[[WatchPlan], None],
    on_change: Callable[[Change], None],
    on_problem: Callable[[str], None],
) -> None:
    """`dvcflow watch`: the watchers of `plan`, sending events to the configured API, until SIGINT or
    SIGTERM; events still queued are handed to the server before it returns."""
    import signal

    from dvcflow.api.events import drain_events, emit_change

    stop = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in signals}
    try:
        with Watchers(plan, send=lambda change: emit_change(plan.root, change), on_change=on_change,
                      on_problem=on_problem):  # fmt: skip
            on_watching(plan)
            stop.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        drain_events()
