"""Which stages a selection means, named as `dvc repro -s` names them: DVC's own collect and plan, asked
in process, and the pre-flight that refuses a run DVC would fail only once it had started.

Why DVC's own code and not dvcflow's reading of `dvc.yaml`: targets, globs, `--single-item` and
`--downstream` then mean exactly what they mean to `dvc repro`, and the stages come in the order it works
through them (which `dvcflow.dvc.session` keeps for `dvc.lock`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvcflow.core.errors import ConfigError, UsageError
from dvcflow.core.records import DataSync
from dvcflow.core.selection import Selection
from dvcflow.dvc.errors import unreadable
from dvcflow.dvc.repository import in_directory, open_repo

if TYPE_CHECKING:
    from dvcflow.dvc.session import PipelineSession


def address(stage: Any, root_dir: str) -> str:
    """A DVC stage's name as `dvc repro -s` accepts it from the repository root: DVC's own `addressing`
    is relative to the current directory, which need not be the root."""
    from dvc.dvcfile import PROJECT_FILE
    from dvc.stage import PipelineStage

    path = Path(os.path.relpath(stage.path, root_dir)).as_posix()
    if isinstance(stage, PipelineStage):
        return stage.name if path == PROJECT_FILE else f"{path}:{stage.name}"
    return path


def collect(repo: Any, selection: Selection) -> list[Any]:
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
    if not stages and selection.targets:  # none named: `dvc repro` goes on with the whole graph (below)
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

    repo = open_repo(root)
    try:
        return tuple(dict.fromkeys(address(stage, repo.root_dir) for stage in collect(repo, selection)))
    except DvcException as err:
        raise unreadable(root, err) from None
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

    repo = session.repo if session is not None else open_repo(root)
    try:
        stages = session.collect(selection) if session is not None else collect(repo, selection)
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
        return tuple(dict.fromkeys(address(stage, repo.root_dir) for stage in stages))
    except DvcException as err:  # an invalid dvc.yaml: bad input, before any flow run
        raise unreadable(root, err) from None
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
