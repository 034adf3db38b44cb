"""Option A: DVC owns the DAG; Prefect operates `dvc repro` (logs, retries, run history)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from dvcflow import dvcrepo
from dvcflow.metrics import MetricsSnapshot, artifact_key, publish_metrics_artifact, read_metrics

FLOW_NAME = "Prefect operates DVC pipeline"
FAIL_ONCE_MESSAGE = "Intentional one-time failure to demonstrate retries."


@task(name="dvc repro", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def dvc_repro_task(repo_root: Path, *, fail_once: bool = False) -> None:
    """Run `dvc repro` in the repo root, every output line into this task's log."""
    if fail_once and task_run.run_count <= 1:
        raise RuntimeError(FAIL_ONCE_MESSAGE)
    logger = get_run_logger()
    logger.info("Running: dvc repro")
    logger.info("CWD: %s", repo_root)
    result = dvcrepo.stream_dvc(["repro"], cwd=repo_root, on_line=logger.info)
    if not result.ok:
        raise dvcrepo.failure(result)


@task(name="metrics summary", cache_policy=NO_CACHE)
def metrics_summary_task(repo_root: Path) -> MetricsSnapshot:
    """Log the metrics the pipeline declares, as the JSON a script would read, and publish them as a
    table artifact (one key per repository) for the UI and `dvcflow metrics --history`."""
    snapshot = read_metrics(repo_root)
    logger = get_run_logger()
    logger.info("Metrics: %s", snapshot.to_json())
    for path, error in snapshot.errors:
        logger.warning("Metrics file %s unreadable: %s", path, error)
    if not snapshot.empty:
        key = artifact_key(repo_root)
        try:
            publish_metrics_artifact(snapshot, key, description=f"Metrics of `{repo_root}` after this run")
        except Exception as exc:  # the metrics are logged above; a failed UI copy must not fail the run
            logger.warning("Could not publish the metrics artifact %s: %s", key, exc)
    return snapshot


@flow(name=FLOW_NAME)
def dvc_pipeline_flow(
    repo_root: Path, fail_once: bool = False, show_metrics: bool = True
) -> MetricsSnapshot | None:
    """Operate the DVC pipeline via `dvc repro`."""
    dvc_repro_task(repo_root, fail_once=fail_once)
    if show_metrics:
        return metrics_summary_task(repo_root)
    return None
