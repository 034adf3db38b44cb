"""A run's resources, put together before it starts: what the selected stages declare (`dvc.yaml` meta
through the DVC adapter, the globs of the settings), the capacity (the caller's `resources=` / `--resource`,
the settings, the machine's GPUs, or a Dask cluster's workers), checked in one line each; then the
machine's Prefect concurrency limits set to that capacity.

`dvcflow.services.launch` and `dvcflow.services.sweep` call `resources_for` after the repository's own
checks and before the Prefect API is contacted, and `share` once it is; a deployed flow (`dvcflow.flows.
deployed`, `dvcflow.flows.remote`) calls both on the machine that runs it, whose GPUs and settings count.
See docs/resources.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from dvcflow.core.errors import ConfigError, UsageError
from dvcflow.core.resources import (
    GPU,
    Capacity,
    Demand,
    Resources,
    ResourceSettings,
    capacity_from_mapping,
    check,
    demands_for,
    resolve_capacity,
)
from dvcflow.core.selection import Selection


def resources_for(
    root: Path,
    selection: Selection,
    capacity: Mapping[str, int] | None,
    *,
    dask_address: str | None = None,
) -> Resources:
    """The run's `Resources` (its demands, the capacity), or a one-line error: a malformed declaration,
    a resource nobody has, a stage that needs more than there is. Reads the run's DVC session."""
    from dvcflow.engine.executor import open_session

    flags = capacity_from_mapping(capacity or {}, "resources")
    if flags and dask_address is not None:
        raise UsageError(
            "--resource does not apply with --dask-address: each worker's --resources says what it has"
        )
    settings = ResourceSettings.read(root)
    session = open_session(root)
    selected = session.select(selection)
    demands = demands_for(selected, session.declarations(selected), settings)
    if dask_address is not None:
        if any(demand.resources for demand in demands.values()):
            check(demands, dask_capacity(dask_address), on_dask=True)
        return Resources(demands, Capacity(), share=False, dask=True)
    if not demands:
        return Resources(share=False)
    from dvcflow.proc.gpus import visible_gpus

    need_gpus = any(demand.amount(GPU) for demand in demands.values())
    resolved = resolve_capacity(flags, settings, visible_gpus, need_gpus=need_gpus)
    check(demands, resolved)
    return Resources(demands, resolved)


def check_given_capacity(root: Path, selection: Selection, capacity: Mapping[str, int]) -> None:
    """What `capacity` (a deployment's `--resource` flags) gives, checked here against what the selected
    stages declare: the flags win over any machine's settings and GPUs, so a stage that needs more than
    they give would fail every run wherever it runs. The rest of the capacity is the running machine's."""
    from dvcflow.dvc.session import PipelineSession

    flags = capacity_from_mapping(capacity, "resources")
    settings = ResourceSettings.read(root)
    session = PipelineSession(root)  # its own: a run of this repository in this process keeps its session
    try:
        selected = session.select(selection)
        demands = demands_for(selected, session.declarations(selected), settings)
    finally:
        session.close()
    given = {
        stage: Demand(tuple((name, amount) for name, amount in demand.resources if name in flags))
        for stage, demand in demands.items()
    }
    sources = tuple((name, "--resource") for name in flags)
    check(given, Capacity(tuple(sorted(flags.items())), sources=sources))


def dask_capacity(address: str) -> Capacity:
    """The most any one worker of the Dask cluster at `address` has of each resource (a stage's task
    must fit one worker): `GPU` → `gpu`."""
    from distributed import Client

    connect: Any = Client
    try:
        with connect(address, timeout=10) as client:
            workers = client.scheduler_info(n_workers=-1).get("workers", {})
    except OSError as err:
        raise ConfigError(f"no Dask scheduler answers at {address} ({err})") from None
    most: dict[str, int] = {}
    for worker in workers.values():
        for name, amount in (worker.get("resources") or {}).items():
            key = str(name).lower()
            most[key] = max(most.get(key, 0), int(amount))
    return Capacity(
        tuple(sorted(most.items())), sources=tuple((name, "the Dask workers' --resources") for name in most)
    )


def share(resources: Resources, linked: bool, announce: Callable[[str], None]) -> Resources:
    """The machine's Prefect concurrency limits, one per resource and mutex group the run takes, set to
    its capacity (`dvcflow.api.limits`); nothing when the run shares none, or when its API is not one
    that outlives it (`linked` False: Prefect's temporary server). The resources as the run shares them."""
    resources = replace(resources, share=resources.share and linked)
    if resources.share and not resources.empty:
        from dvcflow.api.limits import ensure_limits

        ensure_limits(resources.capacity, resources.demands, announce)
    return resources
