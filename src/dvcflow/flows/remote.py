"""The flow `dvcflow deploy --pool NAME` registers: the pipeline at a pinned commit, on a worker that does not
share the caller's disk (docs/remote.md).

- `checkout_step`: the deployment's pull step. Prefect runs it in the flow run's process before the flow:
  this worker's clone of the git remote (cloned once, fetched when it lacks the commit), a fresh worktree of
  it at the commit, DVC's cache shared by the repository's worktrees on this worker; the run then works there.
- `CommitCheckout`: that pull step as a Prefect `RunnerStorage`, so `flow.to_deployment` registers it.
- `git_pipeline_flow`: the remote DVC storage's credentials from the environment, a check that the remote
  answers, then the pipeline as `run-a --pull --push` runs it (or `--per-stage`), then the result saved as a
  DVC experiment named after the flow run and pushed to the git remote; the run is tagged with it, so
  `dvcflow runs` shows it and `dvcflow fetch RUN` brings it home. The worktree is removed at the end.

Its name is `deployed.FLOW_NAME`, the flow `dvcflow trigger NAME` starts runs of.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Failed

from dvcflow.api.execution import remember_task_run, untagged_tasks
from dvcflow.core.errors import DvcflowError
from dvcflow.dvc import gitsource, remote_data
from dvcflow.flows.deployed import FLOW_NAME, reproduce

ENTRYPOINT = "dvcflow.flows.remote.git_pipeline_flow"
STEP = "dvcflow.flows.remote.checkout_step"
EXPERIMENT_TASK = "dvc exp push"


def checkout_step(repository: str, commit: str, subdir: str = ".") -> dict[str, str]:
    """Pull step: the DVC root of a fresh worktree of this worker's clone of `repository` at `commit`
    (Prefect moves the flow run's process there: its `directory` output)."""
    return {"directory": str(gitsource.checkout(repository, commit, subdir))}


class CommitCheckout:
    """`checkout_step` as the `storage` of a Prefect `RunnerDeployment` (only its pull step is used: the
    flow itself is imported from the installed dvcflow, by module path)."""

    pull_interval = None

    def __init__(self, repository: str, commit: str, subdir: str) -> None:
        self.repository, self.commit, self.subdir = repository, commit, subdir

    @property
    def destination(self) -> Path:
        return Path.cwd()

    def set_base_path(self, path: Path) -> None:
        pass

    async def pull_code(self) -> None:
        checkout_step(self.repository, self.commit, self.subdir)

    def to_pull_step(self) -> dict[str, Any]:
        return {STEP: {"repository": self.repository, "commit": self.commit, "subdir": self.subdir}}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CommitCheckout) and self.to_pull_step() == other.to_pull_step()

    __hash__ = None  # type: ignore[assignment]


@task(name=EXPERIMENT_TASK, cache_policy=NO_CACHE)
def experiment_task(repo_root: Path, name: str) -> str:
    """`dvc exp save` of the run's result as experiment NAME, then `dvc exp push` of it to the git remote
    the worker cloned from; its commit."""
    remember_task_run()
    logger = get_run_logger()
    commit = remote_data.save_experiment(repo_root, name, logger.info)
    remote_data.push_experiment(repo_root, name, "origin", logger.info)
    return commit


@flow(name=FLOW_NAME)
def git_pipeline_flow(
    repository: str,
    commit: str,
    subdir: str = ".",
    per_stage: bool = False,
    jobs: int | None = None,
    keep_going: bool = False,
    targets: list[str] | None = None,
    resources: dict[str, int] | None = None,
) -> Any:
    """Reproduce the DVC pipeline of `repository` at `commit` on this worker; DVC decides what is out of
    date; the result comes back as a DVC experiment named after this flow run.

    Args:
        repository: The git remote the worker clones (fixed by `dvcflow deploy`).
        commit: The commit the deployment runs (fixed by `dvcflow deploy`; a run naming another fails).
        subdir: The DVC root's folder inside the git repository.
        per_stage: One task per DVC stage, independent stages in parallel (like `run-a --per-stage`).
        jobs: With per_stage: stages reproducing at once (empty: the CPUs of the machine).
        keep_going: With per_stage: after a failure, finish the independent branches.
        targets: The stages to reproduce, as `dvc repro TARGETS` takes them (empty: the whole pipeline).
        resources: With per_stage: how much there is of each resource the stages declare, e.g.
            {"gpu": 2} (empty: `[tool.dvcflow.capacity]`, GPUs: this worker's; docs/resources.md).
    """
    from prefect.context import FlowRunContext

    logger = get_run_logger()
    root = Path.cwd()
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    try:
        try:
            gitsource.check_checkout(root, commit)
            applied = remote_data.apply_credentials(root, os.environ)
            if applied:
                logger.info("DVC remote settings from the environment: %s", ", ".join(applied))
            remote = remote_data.check_access(root)
        except DvcflowError as err:
            reason = err.message + (f" ({err.hint})" if err.hint else "")
            logger.error(reason)
            return Failed(message=reason)
        logger.info("Commit %s of %s in %s; DVC remote %r", commit[:9], repository, root, remote.name)
        # `run-a --pull --push`: what the stages need comes from the DVC remote, what they wrote goes back
        try:
            outcome = reproduce(root, per_stage, jobs, keep_going, targets, resources, pull=True, push=())
        except DvcflowError as err:  # bad resources or targets for this worker: why, not a traceback
            logger.error(err.message)
            return Failed(message=err.message)
        if isinstance(outcome, State):  # the pipeline failed: nothing to save
            return outcome
        name = remote_data.experiment_name(run.name if run is not None else "dvcflow-run")
        with untagged_tasks():
            experiment_task(root, name)
        if run is not None:
            _tag(run, name)
        logger.info(
            "Experiment %r pushed to %s; bring it home with: dvcflow fetch %s", name, repository, name
        )
        return outcome
    finally:
        gitsource.remove_checkout(root)


def _tag(run: Any, experiment: str) -> None:
    """`dvcflow-exp:NAME` on the flow run: `dvcflow runs` and `dvcflow fetch` find the experiment by it."""
    from prefect.client.orchestration import get_client

    from dvcflow.api.tags import EXPERIMENT_TAG

    with get_client(sync_client=True) as client:
        current = client.read_flow_run(run.id)
        tags = [tag for tag in current.tags if not tag.startswith(EXPERIMENT_TAG)]
        client.update_flow_run(run.id, tags=[*tags, EXPERIMENT_TAG + experiment])
