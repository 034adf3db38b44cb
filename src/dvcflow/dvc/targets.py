"""TODO docstring."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dvcflow.core.errors import ConfigError, PipelineError
from dvcflow.core.records import DataSync
from dvcflow.core.selection import Selection
from dvcflow.dvc.repository import _repo
from dvcflow.dvc.session import PipelineSession, _collect
from dvcflow.dvc.status import _address


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
