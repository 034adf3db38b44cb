"""A nightly Prefect flow that reproduces a DVC pipeline stage by stage with dvcflow.

    python examples/nightly_flow.py path/to/repo      # or NIGHTLY_REPO=path/to/repo, default: here

The flow runs on whatever Prefect API this process is configured for (PREFECT_API_URL, or a profile);
dvcflow's stage tasks run as one subflow run of it. Exits 1 when the pipeline fails.
"""

from __future__ import annotations

import os
import sys

from prefect import flow, get_run_logger

from dvcflow import Pipeline, PipelineRunError, RunResult


@flow(name="nightly")
def nightly(repo: str = ".") -> RunResult:
    logger = get_run_logger()
    pipeline = Pipeline(repo)
    logger.info("Plan:\n%s", pipeline.plan())  # the waves; what would run and why
    try:
        result = pipeline.run(per_stage=True, retries=1)
    except PipelineRunError as failed:
        logger.error("The pipeline failed: %s", failed.result)
        raise
    for name, stage in result.stages.items():
        logger.info("%s: %s after %s attempt(s)", name, stage.state, stage.attempts)
    return result


def main() -> int:
    repo = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("NIGHTLY_REPO", ".")
    try:
        result = nightly(repo)
    except PipelineRunError as failed:
        print(failed.result)
        for name, stage in failed.result.stages.items():
            print(f"  {name}: {stage.state}")
        return 1
    print(result)
    print(f"  subflow run: {result.flow_run_id}")
    for name, stage in result.stages.items():
        print(f"  {name}: {stage.state}")
    print(f"  metrics: {result.metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
