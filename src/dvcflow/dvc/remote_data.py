"""The DVC remote carries the data and DVC experiments carry the results home, for runs on machines that do
not share this disk (docs/remote.md).

Caller side: `default_remote` (the committed default remote a worker will use; a `ConfigError` without one),
`fetch_experiment` (`dvc exp pull` + `dvc exp apply`, then `dvc pull` if asked), `pull_experiments` (a sweep's
trials saved on workers, home).
Worker side: `apply_credentials` (a remote's settings from `DVCFLOW_REMOTE_<REMOTE>_<OPTION>` variables into
the clone's `.dvc/config.local`), `check_access` (the remote answers this worker, or the run fails saying
why, before any stage), `save_experiment` and `push_experiment` (`dvc exp save` / `dvc exp push`).
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvcflow.core.errors import ConfigError, PipelineError
from dvcflow.dvc import repository

CREDENTIALS_PREFIX = "DVCFLOW_REMOTE_"


@dataclass(frozen=True)
class DvcRemote:
    name: str
    url: str


def _config(path: Path) -> Any:
    from configobj import ConfigObj  # DVC's own config format and library

    return ConfigObj(str(path)) if path.is_file() else ConfigObj()


def default_remote(root: Path) -> DvcRemote:
    """The default remote as the committed `.dvc/config` names it: what a worker's clone will use."""
    committed = _config(root / ".dvc" / "config")
    name = committed.get("core", {}).get("remote")
    if not name:
        local = _config(root / ".dvc" / "config.local").get("core", {}).get("remote")
        where = f" ('{local}' is set in .dvc/config.local, which does not travel with git)" if local else ""
        raise ConfigError(
            f"no DVC default remote in .dvc/config{where}: workers pull the pipeline's data from it and "
            "push their results to it",
            hint="`dvc remote add -d NAME URL`, then commit .dvc/config",
        )
    section = committed.get(f'remote "{name}"', {})
    url = section.get("url")
    if not url:
        raise ConfigError(f".dvc/config: the default remote {name!r} has no url")
    return DvcRemote(name, str(url))


def credentials_key(remote: str) -> str:
    """`DVCFLOW_REMOTE_<KEY>_`: the remote's name in upper case, anything but letters and digits as `_`."""
    return CREDENTIALS_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", remote).upper() + "_"


def credential_settings(remotes: list[str], environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """remote → option → value, from `DVCFLOW_REMOTE_<REMOTE>_<OPTION>` (option in lower case)."""
    found: dict[str, dict[str, str]] = {}
    prefixes = sorted(((credentials_key(name), name) for name in remotes), key=lambda item: -len(item[0]))
    for variable, value in environ.items():
        for prefix, name in prefixes:
            if variable.startswith(prefix) and len(variable) > len(prefix):
                found.setdefault(name, {})[variable.removeprefix(prefix).lower()] = value
                break
    return found


def apply_credentials(root: Path, environ: Mapping[str, str]) -> list[str]:
    """Write the remotes' settings found in `environ` to `.dvc/config.local` (`dvc remote modify --local`);
    the `remote.option` names written, never their values."""
    remotes = [
        key[len('remote "') : -1] for key in _config(root / ".dvc" / "config") if key.startswith('remote "')
    ]
    settings = credential_settings(remotes, environ)
    if not settings:
        return []
    local = _config(root / ".dvc" / "config.local")
    local.filename = str(root / ".dvc" / "config.local")
    for name, options in settings.items():
        local.setdefault(f'remote "{name}"', {}).update(options)
    local.write()
    return [f"{name}.{option}" for name, options in sorted(settings.items()) for option in sorted(options)]


def check_access(root: Path) -> DvcRemote:
    """The default remote answers this machine (its top folder may not exist yet); otherwise a `ConfigError`
    with the remote's own reason, e.g. `received 401 (Not Authorized)`, before any stage runs."""
    remote = default_remote(root)
    repo: Any = repository.open_repo(root)
    try:
        with repository.in_repository(root):
            target = repo.cloud.get_remote(remote.name)
            with contextlib.suppress(FileNotFoundError):  # a remote folder nobody pushed to yet
                target.fs.info(target.path)
    except Exception as err:  # each filesystem raises its own errors: every one is the reason
        reason = " ".join(str(err).split()) or type(err).__name__
        key = credentials_key(remote.name)
        raise ConfigError(
            f"DVC remote {remote.name!r} ({remote.url}) refused this worker: {reason}",
            hint=f"give the worker its credentials: {key}USER / {key}PASSWORD (any `dvc remote modify` "
            "option) in its environment, or the storage's own variables (docs/remote.md)",
        ) from None
    finally:
        repo.close()
    return remote


# --- experiments ---------------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PipelineError(f"`git {' '.join(args[:2])}` failed: {result.stderr.strip()}")
    return result.stdout.strip()


@contextlib.contextmanager
def _saving(root: Path) -> Iterator[None]:
    """One experiment save at a time per clone (runs of a worker share its refs): the same flock in git's
    common folder as a sweep's saves (`dvcflow.dvc.experiments`)."""
    common = Path(_git(root, "rev-parse", "--path-format=absolute", "--git-common-dir"))
    with open(common / "dvcflow-exp-save.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


VALID_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def experiment_name(run_name: str) -> str:
    """A flow run's name as an experiment's (a git ref's last part)."""
    return VALID_NAME.sub("-", run_name).strip("-.") or "dvcflow-run"


def _dvc(root: Path, args: list[str], on_line: Callable[[str], None]) -> None:
    from dvcflow.dvc.commands import failure, stream_dvc

    result = stream_dvc(args, cwd=root, on_line=on_line)
    if not result.ok:
        raise failure(result)


def save_experiment(root: Path, name: str, on_line: Callable[[str], None]) -> str:
    """`dvc exp save --force --name NAME`, untracked (not ignored) files included as `dvc exp run`
    includes them (a metrics file with `cache: false`, a new `.gitignore`); returns its commit."""
    top = Path(_git(root, "rev-parse", "--show-toplevel"))
    listed = _git(top, "ls-files", "--others", "--exclude-standard", "-z")
    untracked = [
        str((top / raw).relative_to(root))
        for raw in listed.split("\0")
        if raw and (top / raw).is_relative_to(root)
    ]
    includes = [arg for path in untracked for arg in ("--include-untracked", path)]
    with _saving(root):
        _dvc(root, ["exp", "save", "--force", "--name", name, *includes], on_line)
        baseline = _git(root, "rev-parse", "HEAD")
        return _git(root, "rev-parse", f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}")


def push_experiment(root: Path, name: str, git_remote: str, on_line: Callable[[str], None]) -> None:
    """`dvc exp push --force --no-cache REMOTE NAME`: the experiment's commit to the git remote (its data
    went with `dvc push`)."""
    _dvc(
        root,
        ["exp", "push", "--force", "--no-cache", git_remote, name],
        lambda line: _unless_cache_note(line, on_line),
    )


def _unless_cache_note(line: str, on_line: Callable[[str], None]) -> None:
    if not line.startswith("To push cached outputs"):  # they were pushed: `dvc push` ran before
        on_line(line)


def pull_experiments(root: Path, git_remote: str, names: Sequence[str], *, cache: bool) -> None:
    """`dvc exp pull --force REMOTE NAMES` (with `cache`, their data from the DVC remote too): experiments
    pushed by workers into this repository's `refs/exps`, where `dvc exp show` lists them."""
    # not its lines: with --force, DVC says "No experiments to pull" for one it did fetch
    no_cache = [] if cache else ["--no-cache"]
    _dvc(root, ["exp", "pull", "--force", *no_cache, git_remote, *names], lambda _: None)


def fetch_experiment(
    root: Path, git_remote: str, name: str, *, pull: bool, on_line: Callable[[str], None]
) -> None:
    """`dvc exp pull REMOTE NAME` (with `pull`, its data from the DVC remote too), then `dvc exp apply NAME`:
    its dvc.lock, params and metrics into the workspace, and with `pull` its outputs checked out. Without
    `pull` the outputs are missing from the cache, so DVC's checkout of them fails: expected, `dvc pull`
    brings them."""
    from dvcflow.dvc.commands import failure, stream_dvc

    pull_experiments(root, git_remote, [name], cache=pull)
    result = stream_dvc(["exp", "apply", name], cwd=root, on_line=on_line if pull else lambda _: None)
    if not result.ok and (pull or not any(_CHECKOUT_FAILED in line for line in result.tail)):
        raise failure(result)


_CHECKOUT_FAILED = "ERROR: Checkout failed for following targets"
