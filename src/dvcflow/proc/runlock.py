"""One dvcflow run per repository at a time.

DVC's own repo lock is released while a stage's command runs, so two runs in one repository could start the
same stage twice. A second `dvcflow run-*` waits for the first instead (saying so), holding an flock on
`.dvc/tmp/dvcflow-run.lock` — the kernel drops it if the holder dies, even by SIGKILL.

Not before the run's processes have ended, though: a SIGKILLed dvcflow's stage command may take up to
`tether.GRACE_S` to end, and the next run must not start beside it. An flock belongs to the open file, not
to the process, so every process dvcflow starts in the repository inherits the lock's descriptor
(`children.hand_down`) and keeps it until its process group has ended (`tether.HOLD_FDS_ENV`): the DVC
child of run-a, the tether shim around each stage command of run-b and `--per-stage`. DVC's child is
warmed up before the lock is taken, so the file is opened ahead of it (`open_ahead`): it shares the file
the lock is then taken on. A run that ends normally unlocks it itself, whatever its children still hold.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from dvcflow.core.errors import ConfigError, PipelineError
from dvcflow.proc import children

# Lock files opened before their lock is taken (`open_ahead`), until `exclusive_run` takes it on them.
_AHEAD: dict[Path, IO[str]] = {}


def lock_path(repo_root: Path) -> Path:
    return repo_root / ".dvc" / "tmp" / "dvcflow-run.lock"


@contextlib.contextmanager
def exclusive_run(
    repo_root: Path, *, on_wait: Callable[[str], None], timeout: float | None = None
) -> Iterator[None]:
    """Hold the repository's run lock for the block; wait (up to `timeout` s) if another run has it. The
    processes `children.start` starts in the repository meanwhile hold it too, until they have ended."""
    path = lock_path(repo_root)
    handle = _AHEAD.pop(path, None) or _open(repo_root)
    with handle, contextlib.ExitStack() as handed_down:
        handed_down.callback(children.stop_handing_down, handle.fileno())
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            on_wait(
                f"Another dvcflow run is in progress in {repo_root} (pid {holder}); waiting for it to end"
            )
            _wait(handle, holder, timeout)
        try:  # unbuffered: a failed write leaves nothing for `close` to fail on again
            os.ftruncate(handle.fileno(), 0)
            os.write(handle.fileno(), f"{os.getpid()}\n".encode())
        except OSError as err:
            fcntl.flock(handle, fcntl.LOCK_UN)
            raise _lock_error(path, err) from None
        try:
            yield
        finally:
            os.ftruncate(handle.fileno(), 0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_ahead(repo_root: Path) -> None:
    """Open the run lock's file now, for `exclusive_run` to take the lock on later: what `children.start`
    starts in the repository in between (DVC's child, warmed up while Prefect imports) shares the file,
    and so holds the lock once taken, as a process started under it does. Best effort: `exclusive_run`
    reports a file it cannot open."""
    path = lock_path(repo_root)
    if path not in _AHEAD:
        with contextlib.suppress(ConfigError):
            _AHEAD[path] = _open(repo_root)


def _open(repo_root: Path) -> IO[str]:
    """The run lock's file, open, its descriptor handed down to the processes started in `repo_root`."""
    path = lock_path(repo_root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - the caller closes it
    except OSError as err:
        raise _lock_error(path, err) from None
    children.hand_down(handle.fileno(), repo_root)
    return handle


def _lock_error(path: Path, err: OSError) -> ConfigError:
    """The run lock could not be written: a full disk is said as such, not as a bug in dvcflow."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return ConfigError(
            f"no space left on the device of {path.parent} (writing the run lock {path.name})",
            hint="free some disk space (or quota) and run again",
        )
    return ConfigError(f"cannot write the run lock {path} ({err.strerror or err})")


def _wait(handle: object, holder: str, timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[arg-type]
            return
        except BlockingIOError:
            if deadline is not None and time.monotonic() > deadline:
                raise PipelineError(
                    f"another dvcflow run (pid {holder}) is still in progress after {timeout:g} s"
                ) from None
            time.sleep(0.2)
