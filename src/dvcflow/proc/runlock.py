"""One dvcflow run per repository at a time.

DVC's own repo lock is released while a stage's command runs, so two runs in one repository could start the
same stage twice. A second `dvcflow run-*` waits for the first instead (saying so), holding an flock on
`.dvc/tmp/dvcflow-run.lock` — the kernel drops it if the holder dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dvcflow.core.errors import PipelineError


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
        raise PipelineError(f"cannot create the run lock {path} ({err.strerror})") from None
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
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


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
