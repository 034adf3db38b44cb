"""A DVC repository as dvcflow finds and enters it: its root, its params files, the environment DVC runs
in, the process-wide working-directory lock, and an in-process `Repo`.

Why a lock for the working directory: it is one for all threads, and DVC resolves some paths against it.
Every code that changes it, or runs DVC code that reads it, holds `CWD_LOCK` (`in_directory`,
`in_repository`): sessions of sweep trials, in-process stage functions, experiment saves. The rest of the
DVC adapter builds on these; nothing here runs a DVC command.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dvcflow.core.errors import ConfigError, NotADvcRepoError, PipelineError
from dvcflow.core.settings import QUIET_ENV


def find_repo_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` that holds a `.dvc` directory."""
    origin = (start or Path.cwd()).resolve()
    if not origin.exists():
        raise NotADvcRepoError(f"{origin}: no such directory")
    if not origin.is_dir():
        raise NotADvcRepoError(
            f"{origin} is a file, not a folder", hint="pass --repo the folder of the DVC repository"
        )
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
    path = root / "dvc.yaml"
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        spec = {}
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: {_unreadable(err)}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_where(err)})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a {type(spec).__name__}, not a mapping with a `stages:` section")
    stages = spec.get("stages") or {}
    for stage in stages.values() if isinstance(stages, dict) else ():  # else DVC's validation says why
        body = stage.get("do", stage) if isinstance(stage, dict) else {}
        if not isinstance(body, dict):
            continue
        wdir = str(body.get("wdir", stage.get("wdir", ".") if isinstance(stage, dict) else "."))
        if "$" in wdir:
            continue
        entries = body.get("params", [])
        for entry in entries if isinstance(entries, list) else ():
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
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: {_unreadable(err)}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_where(err)})") from None
        if not isinstance(data, dict):
            what = "empty" if data is None else f"a {type(data).__name__}, not a mapping of params"
            raise ConfigError(f"{path}: params file is {what}")


def _unreadable(err: OSError | UnicodeDecodeError) -> str:
    """Why a file could not be read, without the path the caller names already."""
    if isinstance(err, UnicodeDecodeError):
        return f"not valid UTF-8 (byte {err.object[err.start : err.start + 1]!r} at position {err.start})"
    if isinstance(err, IsADirectoryError):
        return "a directory, not a file"
    return f"cannot be read ({err.strerror or err})"


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
# the next run for the same stage: DVC runs in a child (`python -m dvcflow.dvc.child`) that first ties
# itself and its process group to the dvcflow process this names.
PARENT_PID_ENV = "DVCFLOW_PARENT_PID"


CWD_LOCK = threading.RLock()


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


def open_repo(root: Path) -> Any:
    """An in-process DVC repository (DVC's `Repo`, to be closed); DVC's own log lines stay out of
    dvcflow's output."""
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
        raise ConfigError(f"{root}: DVC cannot open this repository ({' '.join(str(err).split())})") from None
