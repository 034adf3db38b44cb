"""`Pipeline`: a DVC repository's pipeline as a Python object, the noun every `dvcflow` command is a thin
layer over (`Pipeline(repo).run(...)`, then render), and what `from dvcflow import Pipeline` gives a
Prefect user for their own flows.

Provides `Pipeline` with `plan`, `run`, `metrics`, `metrics_diff`, `metrics_history` and `sweep`. The
keyword arguments are the command line's options under Python names; they become the values shared
inside (`Selection`, whose flags are declared once as `SelectionFlags`; `DataSync`), and the work is done
by `dvcflow.services.launch` (`sweep`: `dvcflow.services.sweep`). Nothing here prints: progress notes go
to `announce`.

Inside a running flow, `run` and `sweep` run dvcflow's flow as a subflow of the caller's flow run (see
docs/python-api.md for why); outside one they start a flow run exactly as `dvcflow run-a` does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from dvcflow.core.errors import UsageError
from dvcflow.core.records import DataSync
from dvcflow.core.results import PipelineRunError, RunResult
from dvcflow.core.selection import Selection
from dvcflow.services import launch

if TYPE_CHECKING:
    from typing import Unpack

    from dvcflow.core.graph import Plan
    from dvcflow.core.metrics import MetricsDiff, MetricsSnapshot
    from dvcflow.core.selection import SelectionFlags
    from dvcflow.engine.trials import SweepProgress, SweepReport
    from dvcflow.services.history import MetricsHistory
    from dvcflow.services.sweep import SweepOptions

DEFAULT_REV = "HEAD"
DEFAULT_HISTORY_RUNS = 10

logger = logging.getLogger("dvcflow")


def _log(message: str) -> None:
    """The default `announce`: the caller's flow run log inside a flow, else the `dvcflow` logger."""
    from dvcflow.api.execution import caller_flow_run

    if caller_flow_run() is not None:
        from prefect import get_run_logger

        get_run_logger().info(message)
    else:
        logger.info(message)


class Pipeline:
    """The DVC pipeline of one repository, run under Prefect.

    `repo`: a folder in the DVC repository (default: the current directory); it is looked up when a
    method is called, so constructing a `Pipeline` never fails or touches the disk.
    `ephemeral`: use Prefect's temporary per-process server instead of dvcflow's local one (outside a
    flow only; like `--ephemeral`). `announce`: gets one-line progress notes (the local server started,
    waiting for another run of this repository...); default: logged. `tracebacks`: leave failed tasks'
    tracebacks on the console; False shortens them to one line there, as the CLI does without `--debug`
    (the Prefect UI always has them).
    """

    def __init__(
        self,
        repo: str | os.PathLike[str] | None = None,
        *,
        ephemeral: bool = False,
        announce: Callable[[str], None] | None = None,
        tracebacks: bool = True,
    ) -> None:
        self.repo = Path(repo) if repo is not None else None
        self.ephemeral = ephemeral
        self.announce = announce or _log
        self.tracebacks = tracebacks

    def __repr__(self) -> str:
        return f"Pipeline({str(self.repo) if self.repo is not None else None!r})"

    @property
    def root(self) -> Path:
        """The repository's root (`NotADvcRepoError` when `repo` is in none)."""
        from dvcflow.dvc.repository import find_repo_root

        return find_repo_root(self.repo)

    def plan(self, *targets: str, **flags: Unpack[SelectionFlags]) -> Plan:
        """The waves of the selected stages and, for each, whether a per-stage run would reproduce it
        and why; from DVC's graph and one `dvc status`. Runs nothing, contacts no Prefect API.

        `targets` and the flags select stages as `dvc repro` does (see `run`). `str(plan)` reads well."""
        return launch.plan_stages(self.repo, selection=Selection(targets, **flags))

    def run(
        self,
        *targets: str,
        per_stage: bool = False,
        cached_dag: bool = False,
        jobs: int | None = None,
        keep_going: bool = False,
        retries: int = 1,
        pull: bool = False,
        allow_missing: bool = False,
        push: bool = False,
        params_file: str | os.PathLike[str] | None = None,
        dask_address: str | None = None,
        resources: Mapping[str, int] | None = None,
        show_metrics: bool = True,
        fail_once: bool = False,
        shared_disk: bool | None = None,
        **flags: Unpack[SelectionFlags],
    ) -> RunResult:
        """Reproduce the pipeline as one Prefect flow run; its result, or `PipelineRunError` carrying it.

        Which stages: `targets` (stage names, `sub/dvc.yaml:train`, `data.dvc`; default all), with
        `single_item` (only the targets), `downstream` (the targets and what depends on them), `glob`
        (targets are patterns), `force` (reproduce even if up to date), as `dvc repro` takes them.

        How: by default one task runs `dvc repro` and DVC decides what is up to date. `per_stage=True`:
        one task per stage, independent stages in parallel (at most `jobs`, default the CPUs;
        `keep_going` finishes independent branches after a failure; `dask_address` runs them on a Dask
        cluster; workers that do not see this repository, asked or told by `shared_disk=False`, run each
        stage in a clone of this commit, data through the DVC remote: docs/remote.md). `cached_dag=True`:
        one task per stage too, but Prefect's cache decides what runs and unchanged stages end Cached
        (`params_file`: the params file the run uses, one the pipeline already reads; `dask_address` and
        `shared_disk` as with `per_stage`, the cache's verdict still taken in this process). `retries`:
        retries of a failed stage command (or `dvc repro`).

        Resources (`per_stage` or `cached_dag`; docs/resources.md): stages declare what they need in
        `dvc.yaml` (`meta: {dvcflow: {resources: {gpu: 1}, mutex: [licence]}}`) or by glob in
        `[tool.dvcflow.resources]`; `resources` is how much there is (`{"gpu": 2, "mem_gb": 32}`, over
        `[tool.dvcflow.capacity]`; GPUs default to the machine's). Never more than that runs at once,
        nor two stages of one mutex group, also across runs on this machine sharing the Prefect server.

        Data: `pull` fetches missing data from the DVC remote first, `allow_missing` skips stages whose
        only change is missing data, `push` uploads the outputs after a Completed run (not with
        `cached_dag`). `show_metrics=False` skips reading the metrics. `fail_once` fails the `dvc repro`
        task once, to show a retry.

        Raises `PipelineRunError` (with `.result`) when the flow run ends Failed, Crashed or Cancelled,
        and another `DvcflowError` (`UsageError`, `ConfigError`, `NotADvcRepoError`, `ServerError`...)
        when the input is refused before any flow run starts.
        """
        selection = Selection(targets, **flags)
        sync = DataSync(pull=pull, allow_missing=allow_missing, push=push)
        _check_run_options(
            per_stage=per_stage,
            cached_dag=cached_dag,
            jobs=jobs,
            keep_going=keep_going,
            sync=sync,
            params_file=params_file,
            dask_address=dask_address,
            show_metrics=show_metrics,
            fail_once=fail_once,
            resources=resources,
        )
        if shared_disk is not None and dask_address is None:
            raise UsageError("shared_disk applies with a dask_address")
        hosting = self._hosting()
        engine: launch.EngineOptions = {
            "jobs": jobs,
            "keep_going": keep_going,
            "retries": retries,
            "resources": resources,
        }
        if cached_dag:
            params_path = Path(params_file) if params_file is not None else None
            record = launch.run_cached_dag(
                self.repo,
                params_path=params_path,
                selection=selection,
                dask_address=dask_address,
                shared_disk=shared_disk,
                **engine,
                **hosting,
            )
        elif per_stage:
            record = launch.run_per_stage(
                self.repo,
                selection=selection,
                sync=sync,
                dask_address=dask_address,
                show_metrics=show_metrics,
                shared_disk=shared_disk,
                **engine,
                **hosting,
            )
        else:
            record = launch.run_repro(
                self.repo,
                selection=selection,
                sync=sync,
                retries=retries,
                fail_once=fail_once,
                show_metrics=show_metrics,
                **hosting,
            )
        result = RunResult.from_record(record)
        if not result.completed:
            raise PipelineRunError(result)
        return result

    def metrics(self) -> MetricsSnapshot:
        """The metrics the pipeline's `dvc.yaml` declares, as they are in the workspace now
        (`MetricsError` when there are none yet). `.flat()` gives `{"accuracy": 0.97, ...}`."""
        from dvcflow.core.metrics import require_metrics
        from dvcflow.dvc.metrics_files import read_metrics

        return require_metrics(read_metrics(self.root))

    def metrics_diff(self, rev: str = DEFAULT_REV, *, params: bool = False) -> MetricsDiff:
        """The workspace's metrics against git revision `rev`, like `dvc metrics diff` (with `params`,
        the params too)."""
        from dvcflow.dvc.metrics_files import diff_metrics

        return diff_metrics(self.root, rev, params=params)

    def metrics_history(self, runs: int = DEFAULT_HISTORY_RUNS) -> MetricsHistory:
        """The metrics the last `runs` flow runs of this repository published, newest first, read back
        from the Prefect API."""
        from dvcflow.services.history import read_history

        return read_history(self.repo, runs, announce=self.announce)

    def sweep(
        self,
        *set_params: str,
        on_progress: Callable[[SweepProgress], None] | None = None,
        **options: Unpack[SweepOptions],
    ) -> SweepReport:
        """Run every combination of the `set_params` values (`"train.C=0.1,1,10"`, as `dvc exp run -S`
        takes them), each trial a child flow run in a workspace of its own; the workspace is not touched.

        `options` (`dvcflow.services.sweep.SweepOptions`): `jobs` (trials at once, default the CPUs),
        `metric` (default: the first) and `maximize` (default True) pick the best trial, `per_stage`,
        `save` (default True: every completed trial becomes a DVC experiment), `max_trials` (default 100),
        `dask_address` (workers that do not see this repository, asked or told by `shared_disk=False`, run
        each trial in a clone of this commit; its experiment comes home: docs/remote.md), `resources`
        (how much there is, as for `run`: trials queue for what their stages declare, docs/resources.md).
        `on_progress` gets the counts whenever a trial starts or ends.

        A search instead of a grid: `search="tpe"|"random"|"grid"` asks an Optuna study for `trials`
        points, each as a trial ends; `set_params` then take Hydra's sweep forms (`"train.C=tag(log,
        interval(0.01,100))"`, `range(2,10)`, `choice(a,b)`), `metric` is required, `study` names a
        study kept in the repository (resumed when it exists), `prune="median"|"hyperband"` stops
        trials whose metric per step falls behind, `seed` makes it repeatable, and `apply_best` applies
        the best trial to the workspace at the end (`dvc exp apply`). See docs/sweep.md.

        A failed trial is part of the report (`report.trials`, `report.exit_code`), not an exception."""
        from dvcflow.services.sweep import run_sweep

        return run_sweep(
            self.repo,
            set_params=set_params,
            on_progress=on_progress or (lambda _: None),
            **self._hosting(),
            **options,
        )

    def _hosting(self) -> launch.Hosting:
        return {"ephemeral": self.ephemeral, "debug": self.tracebacks, "announce": self.announce}


def _check_run_options(
    *,
    per_stage: bool,
    cached_dag: bool,
    jobs: int | None,
    keep_going: bool,
    sync: DataSync,
    params_file: object,
    dask_address: str | None,
    show_metrics: bool,
    fail_once: bool,
    resources: Mapping[str, int] | None = None,
) -> None:
    """Refuse options the chosen way of running would ignore (the CLI checks its own flags first)."""
    if per_stage and cached_dag:  # two ways of running: one would be ignored without a word
        raise UsageError("per_stage and cached_dag exclude each other")
    if params_file is not None and not cached_dag:
        raise UsageError("params_file needs cached_dag=True")
    if cached_dag:
        ignored = {
            "pull": sync.pull,
            "allow_missing": sync.allow_missing,
            "push": sync.push,
            "fail_once": fail_once,
            "show_metrics=False": not show_metrics,
        }
        for name, used in ignored.items():
            if used:
                raise UsageError(f"{name} does not apply with cached_dag=True")
    elif per_stage:
        if fail_once:
            raise UsageError("fail_once fails the single `dvc repro` task; with per_stage=True use retries")
    else:
        if jobs is not None or keep_going or resources:
            name = "jobs" if jobs is not None else "keep_going" if keep_going else "resources"
            raise UsageError(f"{name} needs per_stage=True or cached_dag=True")
        if dask_address is not None:
            raise UsageError("dask_address needs per_stage=True or cached_dag=True")
