"""The one Prefect cache policy of dvcflow: a stage's key from DVC's view of it.

The key hashes the repository's root, the stage's name, its command, the hashes DVC computes for its
deps (directories included), the values of its params and the keys of its upstream stages. A stored
result is trusted only if the outputs it recorded are on disk with the same DVC hashes; otherwise they
are checked out from the DVC cache when `dvc.lock` records them and the cache has them, else the stage
runs again (`verdict`). Used by `run-b`, where Prefect's cache decides what runs; under
`run-a --per-stage` DVC's status decides.
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
    """Whether to let Prefect's cache answer (`refresh` False) or run the stage (`refresh` True)."""

    refresh: bool
    note: str | None  # a line for the flow's log, if anything happened


def verdict(
    store: ResultStore, policy: DvcCachePolicy, session: PipelineSession, name: str, *, force: bool
) -> Verdict:
    """Decide before submitting; restores outputs from the DVC cache when that makes a hit true again,
    and brings `dvc.lock` in line with a trusted hit, so that DVC agrees with what Prefect reports."""
    if force:
        return Verdict(True, f"Stage {name}: --force, running it even if cached")
    if not store.exists(policy.key):
        return Verdict(False, None)  # a miss: Prefect runs it
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
    note: str | None = None
    if current != expected:
        changed = ", ".join(
            path for (path, md5), (_, now) in zip(expected, current, strict=False) if md5 != now
        )
        if not session.restore(name, stored.outputs):
            return Verdict(
                True, f"Stage {name}: not reusing its cached result, {changed} changed or went missing"
            )
        note = f"Stage {name}: {changed} restored from the DVC cache"
    if session.changed(name):
        session.record(name)
        note = (note + "; " if note else f"Stage {name}: ") + "cached result recorded in dvc.lock"
    return Verdict(False, note)
