"""Option B: Prefect owns the stage DAG; `prepare → train → evaluate` call `mltoy.pipeline` in-process.

No `dvc repro` runs. DVC's skip-what-is-up-to-date is rebuilt with Prefect caching instead:

- `STAGES`: the three stages as data — stage function, params section, input and output files.
- `StageCachePolicy` / `build_stage_cache_policy`: a stage's cache key, from the md5 of its input files,
  its params section, the source of its stage function (and of the helpers it calls) and the keys of
  its upstream stages, so a change re-runs the stage and everything below it.
- `StageOutcome`: what a stage task returns and Prefect stores — the md5 of every file it wrote. Before
  trusting a cached result the flow compares them with the files on disk; deleted or edited outputs
  make it refresh the cache (run the stage again) instead of reporting a stale `Cached`.
- `stage_dag_flow`: the flow; one task per stage, submitted with `wait_for` edges so the UI draws the DAG.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import CodeType
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture
from prefect.results import ResultStore, get_result_store

from dvcflow.flows.repro import metrics_summary_task
from dvcflow.metrics import MetricsSnapshot
from dvcflow.stage_paths import StagePaths, load_stage_paths
from mltoy.params import Params, load_params
from mltoy.pipeline import stage_evaluate, stage_prepare, stage_train

FLOW_NAME = "Prefect owned stage DAG"
RETRY_DELAY_SECONDS = 2


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: which function it calls with which files, and what it reads and writes."""

    name: str
    function: Callable[..., Mapping[str, Any]]
    section: str  # the params.yaml section the stage reads
    arguments: tuple[tuple[str, str], ...]  # stage function argument → `StagePaths` key
    inputs: tuple[str, ...]  # `StagePaths` keys the stage reads
    outputs: tuple[str, ...]  # `StagePaths` keys the stage writes
    retries: int = 0


STAGES: tuple[Stage, ...] = (
    Stage(
        "prepare",
        stage_prepare,
        section="split",
        arguments=(("raw_csv", "raw"), ("train_csv", "train"), ("test_csv", "test")),
        inputs=("raw",),
        outputs=("train", "test"),
    ),
    Stage(
        "train",
        stage_train,
        section="train",
        arguments=(("train_csv", "train"), ("model_path", "model")),
        inputs=("train",),
        outputs=("model",),
        retries=1,
    ),
    Stage(
        "evaluate",
        stage_evaluate,
        section="evaluate",
        arguments=(("test_csv", "test"), ("model_path", "model"), ("metrics_path", "metrics")),
        inputs=("test", "model"),
        outputs=("metrics",),
    ),
)


def upstream_of(stage: Stage, stages: tuple[Stage, ...] = STAGES) -> tuple[str, ...]:
    """The stages that write a file `stage` reads: its edges in the DAG."""
    return tuple(other.name for other in stages if set(other.outputs) & set(stage.inputs))


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def file_md5(path: Path) -> str | None:
    """The md5 of a file's content (as DVC records it); None when it is missing or not a file."""
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "md5").hexdigest()
    except OSError:
        return None


def _global_names(code: CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _global_names(const)
    return names


def code_fingerprint(function: Callable[..., Any]) -> str:
    """A hash of the function's source and of the same-package functions and constants it uses.

    Editing a helper such as `_read_csv` must re-run the stages that call it, as a `deps:` entry on the
    module would in DVC, while editing `stage_train` alone leaves `prepare` cached.
    """
    root = inspect.unwrap(function)
    package = root.__module__.partition(".")[0]
    parts: dict[str, str] = {}
    pending = [root]
    while pending:
        current = pending.pop()
        name = f"{current.__module__}.{current.__qualname__}"
        if name in parts:
            continue
        try:
            parts[name] = inspect.getsource(current)
        except (OSError, TypeError):  # no source shipped: the bytecode still changes with the code
            parts[name] = current.__code__.co_code.hex()
        for global_name in sorted(_global_names(current.__code__)):
            value = current.__globals__.get(global_name)
            if inspect.isfunction(value):
                value = inspect.unwrap(value)
                if value.__module__.partition(".")[0] == package:
                    pending.append(value)
            elif isinstance(value, (str, int, float, tuple, frozenset)):
                parts[f"{current.__module__}.{global_name}"] = repr(value)
    return _digest(sorted(parts.items()))


@dataclass
class StageCachePolicy(CachePolicy):
    """A stage's cache key from fields computed before it runs (pickle-safe: plain strings only).

    `inputs` holds the md5 of each file read, hashed once the upstream stages have finished.
    """

    stage: str = ""
    inputs: tuple[tuple[str, str | None], ...] = ()  # (path, md5 or None when missing)
    outputs: tuple[str, ...] = ()  # paths written: renaming one is a new result
    params_json: str = ""
    code_hash: str = ""
    upstream_keys: tuple[tuple[str, str], ...] = ()  # sorted (stage, key)

    @property
    def key(self) -> str:
        return _digest(
            self.stage, self.inputs, self.outputs, self.params_json, self.code_hash, self.upstream_keys
        )

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        """Everything the key needs is on the policy; the task's arguments are not hashed."""
        return self.key


def build_stage_cache_policy(
    stage: Stage, repo_root: Path, paths: StagePaths, params: Params, upstream_keys: Mapping[str, str]
) -> StageCachePolicy:
    """Hash what `stage` depends on now; call it once its upstream stages have written their files."""
    return StageCachePolicy(
        stage=stage.name,
        inputs=tuple(
            (paths.get(key).as_posix(), file_md5(repo_root / paths.get(key))) for key in stage.inputs
        ),
        outputs=tuple(paths.get(key).as_posix() for key in stage.outputs),
        params_json=f"{stage.section}:{getattr(params, stage.section).model_dump_json()}",
        code_hash=code_fingerprint(stage.function),
        upstream_keys=tuple(sorted(upstream_keys.items())),
    )


@dataclass(frozen=True)
class StageOutcome:
    """A stage's result as Prefect stores it: the stage function's summary and the md5 of each output."""

    stage: str
    summary: dict[str, Any]
    outputs: tuple[tuple[str, str | None], ...]

    def changed_outputs(self, repo_root: Path) -> list[str]:
        """Outputs that are missing or differ from what the stage wrote."""
        return [path for path, md5 in self.outputs if md5 is None or file_md5(repo_root / path) != md5]


def distrust_reason(store: ResultStore, key: str, repo_root: Path) -> str | None:
    """Why the cached result under `key` must not be reused; None if there is none or it is intact."""
    if not store.exists(key):
        return None
    try:
        outcome = store.read(key).result
    except Exception as err:  # an unreadable record is recomputed, not trusted
        return f"its stored result is unreadable ({type(err).__name__})"
    if not isinstance(outcome, StageOutcome):
        return "its stored result is not a stage outcome"
    changed = outcome.changed_outputs(repo_root)
    if changed:
        return f"{', '.join(changed)} changed or went missing since it was written"
    return None


@task(persist_result=True, cache_policy=NO_CACHE)
def stage_task(stage: Stage, repo_root: Path, paths: StagePaths, params: Params) -> StageOutcome:
    """Call the stage function in-process, then record the md5 of every file it wrote."""
    files = {argument: repo_root / paths.get(key) for argument, key in stage.arguments}
    summary = dict(stage.function(**files, params=params))
    outputs = tuple(
        (paths.get(key).as_posix(), file_md5(repo_root / paths.get(key))) for key in stage.outputs
    )
    get_run_logger().info(
        "Stage %s wrote %s: %s", stage.name, ", ".join(path for path, _ in outputs), summary
    )
    return StageOutcome(stage.name, summary, outputs)


def _succeeded(future: PrefectFuture[StageOutcome]) -> bool:
    future.wait()
    return future.state.is_completed()


def _cache_options(
    stage: Stage,
    policy: StageCachePolicy,
    *,
    repo_root: Path,
    store: ResultStore,
    force: bool,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> dict[str, Any]:
    """The stage's task options: its cache policy, and whether to refresh (re-run) it regardless."""
    refresh = force
    if force:
        logger.info("Stage %s: --force, running it even if cached", stage.name)
    elif reason := distrust_reason(store, policy.key, repo_root):
        logger.info("Stage %s: not reusing its cached result, %s", stage.name, reason)
        refresh = True
    return {"cache_policy": policy, "refresh_cache": refresh}


@flow(name=FLOW_NAME)
def stage_dag_flow(repo_root: Path, params_path: Path, force: bool = False) -> MetricsSnapshot:
    """Run prepare → train → evaluate in-process; an unchanged stage with intact outputs ends `Cached`."""
    logger = get_run_logger()
    paths = load_stage_paths(repo_root)
    params = load_params(params_path)
    logger.info("Params: %s", params_path)
    store = get_result_store().update_for_task(stage_task)  # where stage results live
    assert isinstance(store, ResultStore)  # a sync flow gets the sync variant
    futures: dict[str, PrefectFuture[StageOutcome]] = {}
    keys: dict[str, str] = {}
    for stage in STAGES:
        upstream = [futures[name] for name in upstream_of(stage)]
        options: dict[str, Any] = {}
        # A stage's key hashes the files its upstream writes, so it is computed once they finished.
        # Below a failure, the task is still submitted: Prefect marks it NotReady and does not run it.
        if all(_succeeded(future) for future in upstream):
            upstream_keys = {name: keys[name] for name in upstream_of(stage)}
            policy = build_stage_cache_policy(stage, repo_root, paths, params, upstream_keys)
            keys[stage.name] = policy.key
            options = _cache_options(
                stage, policy, repo_root=repo_root, store=store, force=force, logger=logger
            )
        futures[stage.name] = stage_task.with_options(
            name=stage.name, retries=stage.retries, retry_delay_seconds=RETRY_DELAY_SECONDS, **options
        ).submit(stage, repo_root, paths, params, wait_for=upstream, return_state=False)
    for future in futures.values():
        future.result()  # the first failure in DAG order fails the flow
    return metrics_summary_task(repo_root, wait_for=list(futures.values()))
