"""The DVC adapter: the only module that runs or imports DVC.

It finds the repository root, runs DVC commands as subprocesses with their output streamed line by
line, and wraps DVC's failures as `PipelineError`s.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dvcflow.errors import NotADvcRepoError, PipelineError
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


def dvc_environment() -> dict[str, str]:
    """The environment DVC and the stage commands run in.

    The interpreter running dvcflow goes first on PATH, so `python` in a stage's `cmd` is the one
    with the project installed, as after `source .venv/bin/activate`.
    """
    env = dict(os.environ)
    env.update(QUIET_ENV)
    env["PYTHONUNBUFFERED"] = "1"  # lines arrive as they are printed, not when a buffer fills
    bin_dir = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:
        env["PATH"] = os.pathsep.join([bin_dir, path]) if path else bin_dir
    return env


def dvc_command(*args: str) -> list[str]:
    """DVC from this interpreter, not whichever `dvc` comes first on PATH."""
    return [sys.executable, "-m", "dvc", *args]


@dataclass(frozen=True)
class CommandResult:
    args: tuple[str, ...]
    returncode: int
    tail: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def stream_dvc(args: Sequence[str], cwd: Path, on_line: Callable[[str], None]) -> CommandResult:
    """Run `dvc ARGS` in `cwd`, handing every non-blank output line to `on_line` as it arrives."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        dvc_command(*args),
        cwd=cwd,
        env=dvc_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        try:
            for raw in process.stdout:
                line = raw.rstrip().expandtabs(4)
                if line.strip():
                    tail.append(line)
                    on_line(line)
        except BaseException:
            process.terminate()
            process.wait()
            raise
        returncode = process.wait()
    return CommandResult(tuple(args), returncode, tuple(tail))


def failure(result: CommandResult) -> PipelineError:
    """A readable error from a failed DVC command: its exit code and last lines."""
    shown = "\n".join(f"  {line}" for line in result.tail[-8:])
    return PipelineError(f"`dvc {' '.join(result.args)}` failed with exit code {result.returncode}:\n{shown}")


def _repo(root: Path) -> object:
    os.environ.update(QUIET_ENV)
    try:
        from dvc.repo import Repo
    except ImportError as err:  # pragma: no cover - dvc is a dependency
        raise PipelineError(f"DVC is not installed in this environment ({err})") from None
    from dvc.exceptions import DvcException

    try:
        return Repo(str(root))
    except DvcException as err:
        raise PipelineError(f"{root}: DVC cannot open this repository ({err})") from None


def metrics_show(root: Path) -> dict[str, dict[str, object] | str]:
    """The metrics files `dvc.yaml` declares: file → its parsed data, or an error message."""
    from dvc.exceptions import DvcException

    repo = _repo(root)
    try:
        shown = repo.metrics.show()  # type: ignore[attr-defined]
    except DvcException as err:
        raise PipelineError(f"DVC cannot read the metrics of {root} ({err})") from None
    files: dict[str, dict[str, object] | str] = {}
    for path, entry in shown.get("", {}).get("data", {}).items():
        if "error" in entry:
            error = entry["error"]
            files[path] = f"{type(error).__name__}: {error}" if isinstance(error, Exception) else str(error)
        else:
            files[path] = entry.get("data", {})
    return files
