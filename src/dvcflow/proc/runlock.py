"""One dvcflow run per repository at a time.

DVC's own repo lock is released while a stage's command runs, so two runs in one repository could start the
same stage twice. A second `dvcflow run-*` waits for the first instead (saying so), holding an flock on
`.dvc/tmp/dvcflow-run.lock` — the kernel drops it if the holder dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dvcflow.core.errors import ConfigError, PipelineError


def lock_path(repo_root: Path) -> Path:
    return repo_root / ".dvc" / "tmp" / "dvcflow-run.lock"


@contextlib.contextmanager
def exclusive_run(
    repo_root: Path, *, on_wait: Callable[[str], None], timeout: float | None = None
) -> Iterator[None]:
    """Hold the repository's run lock for the block; wait (up to `timeout` s) if another run has it."""
    path = lock_path(repo_root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - closed by the with below
    except OSError as err:
        raise _lock_error(path, err) from None
    with handle:
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
