"""The one Prefect cache policy of dvcflow: a stage's key from DVC's view of it.

The key hashes the repository's root, the stage's name, its command, the hashes DVC computes for its
deps (directories included), the values of its params and the keys of its upstream stages. A stored
result is trusted only if the outputs it recorded are on disk with the same DVC hashes and DVC finds the
stage up to date (`verdict`): a hit is never a stage `dvc repro` would run. Anything else (a miss, an
untrusted hit, `--force`) goes to the task, where DVC's own steps decide: up to date, restored from its
run cache, or run (`engine.executor`). Used by `run-b`; under `run-a --per-stage` DVC's status decides.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.results import ResultStore

from dvcflow.dvc.session import PipelineSession, StageFingerprint
from dvcflow.engine.executor import StageResult


@dataclass
class DvcCachePolicy(CachePolicy):
    """A stage's cache key, computed before it is submitted (plain strings only: pickle-safe)."""

    stage: str = ""
    repository: str = ""  # the repository's root: results are reused within one repository
    fingerprint: str = ""  # JSON of the `StageFingerprint`
    upstream_keys: tuple[tuple[str, str], ...] = ()  # sorted (stage, key)

    @property
    def key(self) -> str:
        parts = json.dumps(
            [self.repository, self.stage, self.fingerprint, self.upstream_keys], sort_keys=True
        )
        return "dvc-stage-" + hashlib.sha256(parts.encode()).hexdigest()

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        """Everything the key needs is on the policy; the task's arguments are not hashed.

        Also the one moment a cache hit's task run is seen in this process (its function never runs)."""
        from dvcflow.api.execution import remember_task_run

        remember_task_run(task_ctx.task_run)
        return self.key


def policy_for(root: Path, fingerprint: StageFingerprint, upstream_keys: Mapping[str, str]) -> DvcCachePolicy:
    body = json.dumps(
        {
            "cmd": fingerprint.cmd,
            "deps": fingerprint.deps,
            "params": fingerprint.params,
            "outs": fingerprint.outs,
        }
    )
    return DvcCachePolicy(
        repository=str(root),
        stage=fingerprint.stage,
        fingerprint=body,
        upstream_keys=tuple(sorted(upstream_keys.items())),
    )


@dataclass(frozen=True)
class Verdict:
    """Whether to let Prefect's cache answer (`refresh` False: a hit if it has the key, else the task
    runs) or to run the task whatever it has (`refresh` True)."""

    refresh: bool
    note: str | None  # a line for the flow's log, if anything happened


def verdict(
    store: ResultStore, policy: DvcCachePolicy, session: PipelineSession, name: str, *, force: bool
) -> Verdict:
    """Decide before submitting. A stored result is trusted when the outputs it recorded are on disk
    and DVC finds the stage up to date; otherwise the task runs, and DVC decides there (an output
    changed or missing may come back from DVC's run cache, as with `dvc repro`)."""
    if force:
        return Verdict(True, f"Stage {name}: --force, running it even if cached")
    if not store.exists(policy.key):
        return Verdict(False, None)  # a miss: Prefect runs the task, DVC decides
    try:
        stored = store.read(policy.key).result
    except Exception as err:  # an unreadable record is recomputed, not trusted
        return Verdict(
            True, f"Stage {name}: not reusing its cached result, unreadable ({type(err).__name__})"
        )
    if not isinstance(stored, StageResult):
        return Verdict(True, f"Stage {name}: not reusing its cached result, it is not a stage result")
    expected = [(out.path, out.md5) for out in stored.outputs]
    current = [(out.path, out.md5) for out in session.current_outputs(name)]
    if current != expected:
        changed = ", ".join(
            path for (path, md5), (_, now) in zip(expected, current, strict=False) if md5 != now
        )
        return Verdict(
            True, f"Stage {name}: not reusing its cached result, {changed} changed or went missing"
        )
    if session.changed(name):  # `dvc.lock` disagrees, or DVC runs it every time (`always_changed`)
        return Verdict(True, f"Stage {name}: not reusing its cached result, DVC finds the stage changed")
    return Verdict(False, None)
