"""What a run started by a change does before `dvc repro`: say what changed, move the workspace to the
pushed commit (`--watch-branch`) and update the imports whose source moved (`--watch-imports`).

A change of files needs nothing here: `dvc repro` then reproduces what DVC finds out of date.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dvcflow.core.changes import BRANCH, EVENT, IMPORTS, Change


@task(name="move to commit", cache_policy=NO_CACHE)
def move_to_commit_task(repo_root: Path, remote: str, branch: str, commit: str) -> str:
    """Bring the workspace to the commit the branch moved to; refused (the run fails, saying why) when
    that would lose work: uncommitted changes, another branch, local commits the remote lacks."""
    from dvcflow.core.errors import PipelineError
    from dvcflow.dvc.branch import move_to

    logger = get_run_logger()
    try:
        done = move_to(repo_root, remote, branch, commit)
    except PipelineError as err:
        logger.error("Not moving the workspace: %s", err)
        raise
    logger.info("Workspace: %s", done)
    return done


@task(name="dvc update", cache_policy=NO_CACHE)
def update_imports_task(repo_root: Path, imports: tuple[str, ...]) -> None:
    """`dvc update` of the imports whose source has a newer version, every line into this task's log."""
    from dvcflow.dvc.commands import failure
    from dvcflow.dvc.watched import update_imports

    logger = get_run_logger()
    logger.info("Running: dvc update %s", " ".join(imports))
    result = update_imports(repo_root, imports, logger.info)
    if not result.ok:
        raise failure(result)


def apply_change(repo_root: Path, parameter: dict[str, Any] | None) -> Change | None:
    """Log the change this run was started for (None: not started by one) and prepare the workspace."""
    change = Change.from_parameter(parameter)
    if change is None:
        return None
    logger = get_run_logger()
    event = f" (event {change.event_id})" if change.event_id else ""
    logger.info("Started by %s%s: %s", EVENT, event, change.summary(width=20))
    if change.kind == BRANCH and change.commit and change.branch:
        move_to_commit_task(repo_root, change.remote or "origin", change.branch, change.commit)
    if change.kind == IMPORTS and change.imports:
        update_imports_task(repo_root, change.imports)
    return change
