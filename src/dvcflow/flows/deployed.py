"""The one flow `dvcflow deploy` registers: this repository's pipeline, run the way `run-a` runs it.

Its parameters are what the Prefect UI's "Custom run" form offers (typed, with the descriptions below).
It runs the bodies of the existing flows (`dvc repro` in one task, or one task per stage) inside its
own flow run, so a deployment run is one flow run with the same tasks, logs and metrics artifact as a
`run-a` run. The repository's tag comes from the deployment, which Prefect puts on every run it makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from dvcflow.core.metrics import MetricsSnapshot
from dvcflow.core.resources import cpu_count

FLOW_NAME = "dvcflow pipeline"
ENTRYPOINT = "dvcflow.flows.deployed.deployed_pipeline_flow"


@flow(name=FLOW_NAME)
def deployed_pipeline_flow(
    repo_root: str,
    per_stage: bool = False,
    jobs: int | None = None,
    keep_going: bool = False,
    change: dict[str, Any] | None = None,
    targets: list[str] | None = None,
    resources: dict[str, int] | None = None,
) -> MetricsSnapshot | Any:
    """Reproduce this repository's DVC pipeline; DVC decides what is out of date.

    Args:
        repo_root: The DVC repository, an absolute path on the machine that runs the flow (fixed by
            `dvcflow deploy`: a run that names another one is refused).
        per_stage: One task per DVC stage, independent stages in parallel (like `run-a --per-stage`).
        jobs: With per_stage: stages reproducing at once (empty: the CPUs of the machine).
        keep_going: With per_stage: after a failure, finish the independent branches.
        change: What changed, set by the deployment's on-change trigger from its
            `dvcflow.repository.changed` event (empty for other runs): changed files, the commit a
            watched branch moved to (checked out first), or imports with a newer version (updated first).
        targets: The stages to reproduce, as `dvc repro TARGETS` takes them (empty: the whole pipeline).
        resources: With per_stage: how much there is of each resource the stages declare, e.g.
            {"gpu": 2} (empty: `[tool.dvcflow.capacity]`, GPUs: this machine's; docs/resources.md).
    """
    from dvcflow.api.crash import crash_orphaned_runs
    from dvcflow.core.errors import UsageError
    from dvcflow.proc.runlock import exclusive_run

    root = _registered_root(repo_root)
    if jobs is not None and jobs < 1:
        raise UsageError(f"jobs must be at least 1, got {jobs}")
    logger = get_run_logger()
    with exclusive_run(root, on_wait=logger.info):  # one dvcflow run per repository at a time
        if orphans := crash_orphaned_runs(root):
            logger.warning(
                "Marked %d flow run(s) of this repository Crashed: their process had died", orphans
            )
        if change:
            from dvcflow.flows.changes import apply_change

            apply_change(root, change)
        return reproduce(root, per_stage, jobs, keep_going, targets, resources)


def reproduce(
    root: Path,
    per_stage: bool,
    jobs: int | None,
    keep_going: bool,
    targets: list[str] | None,
    resources: dict[str, int] | None,
    *,
    pull: bool = False,
    push: tuple[str, ...] | None = None,
) -> Any:
    """A deployed run's pipeline, in this flow run: `run-a [TARGETS]` (`--pull`/`--push` with `pull` and
    `push`), or with `per_stage` a task per stage within this machine's resources (what the stages declare,
    the capacity from `resources`, the settings and this machine's GPUs, shared through its Prefect
    concurrency limits)."""
    from dvcflow.core.errors import UsageError
    from dvcflow.core.selection import Selection

    selection = Selection(targets=tuple(targets or ()))
    if push is not None and not selection.everything:  # the stages the targets select, not all of them
        from dvcflow.dvc.targets import selected_stages

        push = selected_stages(root, selection)
    if not per_stage:
        if resources:
            raise UsageError("resources apply to per_stage runs: each stage holds what it declares")
        from dvcflow.flows.repro import dvc_pipeline_flow

        repro_args = (*(("--pull",) if pull else ()), *selection.dvc_args())
        return dvc_pipeline_flow.fn(
            root, fail_once=False, show_metrics=True, repro_args=repro_args, push=push
        )
    from dvcflow.engine.executor import close_session
    from dvcflow.engine.resources import resources_for, share
    from dvcflow.flows.per_stage import per_stage_flow

    logger = get_run_logger()
    try:
        planned = share(resources_for(root, selection, resources), True, logger.info)
    except BaseException:
        close_session(root)  # the flow below would have closed it
        raise
    return per_stage_flow.fn(
        root,
        jobs=jobs or cpu_count(),
        keep_going=keep_going,
        retries=1,
        show_metrics=True,
        selection=selection,
        resources=planned,
        pull=pull,
        push=push,
    )


def check_repo_root(repo_root: str, registered: str | None, tags: list[str]) -> Path:
    """`repo_root` if it is the repository the deployment was registered for: a custom run (UI form,
    `--param repo_root=...`) must not run stage commands in another directory."""
    from dvcflow.api.tags import repo_tag
    from dvcflow.core.errors import UsageError

    root = Path(repo_root)
    if (registered is not None and Path(registered) != root) or repo_tag(root) not in tags:
        raise UsageError(
            f"repo_root {repo_root!r} is not the repository this deployment serves"
            + (f" ({registered})" if registered else ""),
            hint="register a deployment for that repository with `dvcflow deploy` there",
        )
    return root


def _registered_root(repo_root: str) -> Path:
    """The checked root: compared with the deployment's own `repo_root` and the run's repository tag."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    registered = None
    if run is not None and run.deployment_id is not None:
        with get_client(sync_client=True) as client:
            registered = client.read_deployment(run.deployment_id).parameters.get("repo_root")
    return check_repo_root(repo_root, registered, list(run.tags) if run is not None else [])
