"""`run-b`: Prefect owns the stage DAG and the skipping, on any DVC repository.

The same stage graph and the same task as `run-a --per-stage` (see `dvcflow.engine`), but Prefect's cache
answers first (`DvcCachePolicy`, keyed on DVC's hashes): an unchanged stage whose outputs are intact ends
`Cached`. Whatever it has no trusted record of goes through DVC's own steps, so exactly the stages
`dvc repro` would run do (`UpToDate`, `Restored` or `Completed`). Stages a repository registers in
`[tool.dvcflow.stages]` run as in-process Python functions. `.dvc` data sources are verified by DVC in the
flow itself, not as tasks. Afterwards DVC agrees: outputs in its cache, `dvc.lock` as `dvc repro` writes
it, `dvc status` clean. On a Dask cluster the cache's verdict is still taken in this flow; the stages run on
the workers, in this repository or, where they do not see it, in clones (`engine.cached_clones`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.results import ResultStore, get_result_store

from dvcflow.core.clones import CloneSource
from dvcflow.core.graph import PipelineSnapshot, StageKind, plan
from dvcflow.core.metrics import MetricsSnapshot
from dvcflow.core.resources import NO_RESOURCES, Resources
from dvcflow.core.selection import EVERYTHING, Selection
from dvcflow.engine.executor import close_session, open_session
from dvcflow.engine.plugins import load_registry
from dvcflow.engine.task import stage_task
from dvcflow.flows.per_stage import finish, publish_dag, run_plan, verify_sources

FLOW_NAME = "Prefect owned stage DAG"
CACHE_DECIDES = "Prefect's cache decides"


@flow(name=FLOW_NAME)
def cached_dag_flow(
    repo_root: Path,
    params_path: Path | None,
    jobs: int = 4,
    keep_going: bool = False,
    retries: int = 1,
    selection: Selection = EVERYTHING,
    resources: Resources = NO_RESOURCES,
    clones: CloneSource | None = None,
) -> MetricsSnapshot | State[Any] | None:
    """Run the selected stages; an unchanged stage with intact outputs ends `Cached` (`UpToDate` the
    first time, when only DVC's record says so). `resources`: what stages declare they need and the
    capacity (`dvcflow.core.resources`). `clones`: on Dask workers that do not share this disk, the
    stages the cache cannot vouch for run in clones of this commit (`engine.cached_clones`; there a
    stage runs its `cmd`, never an in-process function)."""
    logger = get_run_logger()
    logger.info("Params: %s", params_path or "none (no stage reads params.yaml)")
    session = open_session(repo_root)
    try:
        selected = session.select(selection)
        verify_sources(session, selected)
        graph = session.snapshot(with_status=False).graph
        stages = [name for name in selected if graph[name].kind is StageKind.STAGE]
        stage_plan = plan(
            PipelineSnapshot(graph, dict.fromkeys(stages, CACHE_DECIDES)), stages, demands=resources.demands
        )
        publish_dag(stage_plan, repo_root)
        store = get_result_store().update_for_task(stage_task.with_options(persist_result=True))
        assert isinstance(store, ResultStore)  # a sync flow gets the sync variant
        launcher = run_plan(
            stage_plan, repo_root, session, selection, selected, resources, jobs=jobs, keep_going=keep_going,
            retries=retries, clones=clones, store=store, by_cache=True, functions=load_registry(repo_root),
            name_runs_after_stages=False,
        )  # fmt: skip
        return finish(launcher.futures, session, show_metrics=True, counts=False)
    finally:
        close_session(repo_root)
