"""What a stage needs (GPUs, memory, a licence) and how much of it there is: declarations, capacity, checks.

A stage declares what it needs in `dvc.yaml`'s free-form `meta` field (which DVC ignores), or many stages
at once by glob in `[tool.dvcflow.resources]` (in `pyproject.toml`, or `resources:` in a `dvcflow.yaml`):

    meta: {dvcflow: {resources: {gpu: 1, mem_gb: 12}, mutex: [licence-server]}}
    [tool.dvcflow.resources]
    "train@*" = {gpu = 1, mutex = ["licence-server"]}

How much there is comes from `--resource NAME=AMOUNT` flags over `[tool.dvcflow.capacity]` (or
`capacity:` in `dvcflow.yaml`); for `gpu`, by default, from the devices the machine shows
(`dvcflow.proc.gpus`). Amounts are whole numbers. A mutex group allows one stage at a time.

Provides:
- `Demand` (one stage's needs), `Capacity` (what there is), `Grant` (what a running stage holds, with its
  GPU indices), `Resources` (a run's capacity and demands, passed to the engine flows), `one_at_a_time`
  (what a whole `dvc repro` of several stages holds: a sweep's trial).
- `cpu_count` (the default `--jobs`), `capacity_from_flags`, `ResourceSettings.read` (the tables),
  `demands_for` (globs, then each stage's own `meta`, which wins), `resolve_capacity`, `check` (one-line
  errors before anything runs).

Pure logic and reading the settings files: no DVC, no Prefect, cheap to import. The scheduling itself is in
`dvcflow.engine.scheduler`, the sharing through the Prefect server in `dvcflow.api.limits`.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvcflow.core.errors import ConfigError, UsageError

GPU = "gpu"
META_KEY = "dvcflow"  # `meta: {dvcflow: ...}` in dvc.yaml
RESOURCES = "resources"
MUTEX = "mutex"
SETTINGS_FILE = "dvcflow.yaml"  # for a repository without a pyproject.toml
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_BANNED = "/%&<>"  # characters Prefect refuses in a concurrency limit's name

Amounts = tuple[tuple[str, int], ...]  # (resource, amount) sorted by resource, amounts > 0


@dataclass(frozen=True)
class Demand:
    """What one stage holds while it runs: amounts of consumable resources, and mutex groups."""

    resources: Amounts = ()
    mutex: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.resources and not self.mutex

    def amount(self, resource: str) -> int:
        return dict(self.resources).get(resource, 0)

    def as_dict(self) -> dict[str, Any]:
        """`{"resources": {"gpu": 1}, "mutex": ["licence-server"]}`, as `plan --json` shows it."""
        return {RESOURCES: dict(self.resources), MUTEX: list(self.mutex)}

    def __str__(self) -> str:
        """`gpu=1, mem_gb=12, mutex licence-server`."""
        return ", ".join(
            [
                *(f"{name}={amount}" for name, amount in self.resources),
                *(f"mutex {group}" for group in self.mutex),
            ]
        )


NO_DEMAND = Demand()


@dataclass(frozen=True)
class Capacity:
    """How much of each resource there is; `gpus`: the device indices `CUDA_VISIBLE_DEVICES` hands out
    (as many as the `gpu` amount); `sources`: where each amount came from, for messages."""

    amounts: Amounts = ()
    gpus: tuple[str, ...] = ()
    sources: tuple[tuple[str, str], ...] = ()

    def amount(self, resource: str) -> int | None:
        return dict(self.amounts).get(resource)

    def source(self, resource: str) -> str:
        return dict(self.sources).get(resource, "")

    def __str__(self) -> str:
        parts = []
        for name, amount in self.amounts:
            source = self.source(name)
            parts.append(f"{name}={amount}" + (f" ({source})" if source else ""))
        return ", ".join(parts) or "none"


NO_CAPACITY = Capacity()


@dataclass(frozen=True)
class Grant:
    """What the scheduler gave a stage it starts: its demand, its GPU indices (of `devices`, the
    capacity's), how long it waited for them (seconds from ready to started, while only resources or a
    mutex held it back)."""

    demand: Demand = NO_DEMAND
    gpus: tuple[str, ...] = ()
    waited: float = 0.0
    devices: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return self.demand.empty

    def environment(self, gpus: Sequence[str] | None = None) -> dict[str, str]:
        """`CUDA_VISIBLE_DEVICES` for a stage that holds GPUs (`gpus`, by default its grant's); nothing
        when it holds none or no indices were handed out (on Dask the worker's own environment rules)."""
        held = self.gpus if gpus is None else gpus
        return {"CUDA_VISIBLE_DEVICES": ",".join(held)} if self.demand.amount(GPU) and held else {}


NO_GRANT = Grant()


@dataclass(frozen=True)
class Resources:
    """A run's resource plan, handed to the engine flows: each selected stage's demand (only those that
    declare one), the capacity, and how limits are enforced beyond this process: `share` holds a Prefect
    global concurrency limit per resource and mutex group around each command (`dvcflow.api.limits`);
    `dask` turns the amounts into Dask worker resources instead (the cluster enforces them). `pool`: the
    key of a pool of free resources that several runs of this process take from (a sweep's trials:
    `dvcflow.engine.scheduler.shared`); empty, the run counts its own."""

    demands: Mapping[str, Demand] = field(default_factory=dict)
    capacity: Capacity = NO_CAPACITY
    share: bool = True
    dask: bool = False
    pool: str = ""

    @property
    def empty(self) -> bool:
        return not self.demands

    def demand(self, stage: str) -> Demand:
        return self.demands.get(stage, NO_DEMAND)


NO_RESOURCES = Resources(share=False)


def one_at_a_time(demands: Iterable[Demand]) -> Demand:
    """What a run of these stages one after another (one `dvc repro`) holds from its start to its end:
    the most any one of them needs of each resource, and every mutex group any of them is in."""
    most: dict[str, int] = {}
    groups: dict[str, None] = {}
    for demand in demands:
        for name, amount in demand.resources:
            most[name] = max(most.get(name, 0), amount)
        groups.update(dict.fromkeys(demand.mutex))
    return Demand(tuple(sorted(most.items())), tuple(sorted(groups)))


def cpu_count() -> int:
    """The machine's CPUs (at least 1): how many stages run at once when `--jobs` does not say."""
    return os.cpu_count() or 1


def dask_resources(demand: Demand) -> dict[str, int]:
    """The Dask worker resources for a demand: `gpu` → `GPU`, `mem_gb` → `MEM_GB` (workers started with
    `--resources GPU=1`)."""
    return {name.upper(): amount for name, amount in demand.resources}


# Parsing what people write


def _resource_name(raw: object, where: str, error: type[ConfigError | UsageError]) -> str:
    name = str(raw).strip().lower()
    if not _NAME.match(name) or name == MUTEX:
        raise error(
            f"{where}: {raw!r} is not a resource name (letters, digits and _, starting with a letter)"
        )
    return name


def _amount(raw: object, where: str, error: type[ConfigError | UsageError]) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        if isinstance(raw, str) and re.fullmatch(r"\s*-?\d+\s*", raw):
            raw = int(raw)
        else:
            raise error(f"{where}: the amount must be a whole number, got {raw!r}")
    if raw < 0:
        raise error(f"{where}: the amount must not be negative, got {raw}")
    return raw


def _amounts(
    table: object, where: str, error: type[ConfigError | UsageError] = ConfigError
) -> dict[str, int]:
    if not isinstance(table, Mapping):
        raise error(f"{where}: expected a table of NAME = AMOUNT, got {table!r}")
    amounts: dict[str, int] = {}
    for raw, value in table.items():
        name = _resource_name(raw, where, error)
        amounts[name] = _amount(value, f"{where}.{name}", error)
    return amounts


def _mutex(value: object, where: str) -> tuple[str, ...]:
    groups = [value] if isinstance(value, str) else value
    if not isinstance(groups, list):
        raise ConfigError(f"{where}: expected a list of group names, got {value!r}")
    for group in groups:
        if not isinstance(group, str):
            raise ConfigError(f"{where}: a mutex group name must be a string, got {group!r}")
        if not group.strip() or any(char in group for char in _BANNED):
            raise ConfigError(f"{where}: {group!r} is not a mutex group name (none of {_BANNED}, not empty)")
    return tuple(dict.fromkeys(group.strip() for group in groups))


def capacity_from_mapping(amounts: Mapping[str, object], where: str = "resources") -> dict[str, int]:
    """`Pipeline.run(resources={"gpu": 2})` → `{"gpu": 2}` (`UsageError` naming the bad entry)."""
    return _amounts(amounts, where, UsageError)


def capacity_from_flags(values: Sequence[str]) -> dict[str, int]:
    """`--resource gpu=2 --resource mem_gb=32` → `{"gpu": 2, "mem_gb": 32}` (`UsageError` naming the flag)."""
    amounts: dict[str, int] = {}
    for value in values:
        where = f"--resource {value}"
        name, sep, amount = value.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"{where}: expected NAME=AMOUNT, e.g. gpu=2")
        key = _resource_name(name, where, UsageError)
        amounts[key] = _amount(amount.strip(), where, UsageError)
    return amounts


@dataclass(frozen=True)
class _Declared:
    """A declaration's two fields, each None when not given (a stage's meta replaces a glob's field by
    field)."""

    resources: dict[str, int] | None
    mutex: tuple[str, ...] | None


def _meta_declaration(value: object, where: str) -> _Declared:
    """`meta: {dvcflow: {resources: {...}, mutex: [...]}}` (unknown keys are refused: a typo must not
    silently run a GPU stage beside another)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping with resources and/or mutex, got {value!r}")
    unknown = sorted(str(key) for key in value if key not in (RESOURCES, MUTEX))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (expected {RESOURCES} and/or {MUTEX})")
    resources = _amounts(value[RESOURCES], f"{where}.{RESOURCES}") if RESOURCES in value else None
    mutex = _mutex(value[MUTEX], f"{where}.{MUTEX}") if MUTEX in value else None
    return _Declared(resources, mutex)


def _glob_declaration(value: object, where: str) -> _Declared:
    """`"train@*" = {gpu = 1, mutex = ["licence-server"]}`: resource amounts, and an optional `mutex`."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table such as {{gpu = 1}}, got {value!r}")
    amounts = {key: amount for key, amount in value.items() if key != MUTEX}
    mutex = _mutex(value[MUTEX], f"{where}.{MUTEX}") if MUTEX in value else None
    return _Declared(_amounts(amounts, where), mutex)


@dataclass(frozen=True)
class ResourceSettings:
    """`[tool.dvcflow.resources]` (glob → declaration) and `[tool.dvcflow.capacity]` of a repository, from
    its `pyproject.toml` or its `dvcflow.yaml` (`resources:` and `capacity:`), each from one of them."""

    globs: tuple[tuple[str, Any], ...] = ()
    capacity: tuple[tuple[str, int], ...] = ()
    globs_from: str = ""
    capacity_from: str = ""

    @classmethod
    def read(cls, root: Path) -> ResourceSettings:
        from dvcflow.core.settings import find_pyproject, pyproject_table

        tables: dict[str, tuple[Any, str]] = {}
        pyproject = find_pyproject(root)
        if pyproject is not None:
            for key in (RESOURCES, "capacity"):
                table = pyproject_table(root).get(key)
                if table is not None:
                    tables[key] = (table, f"{pyproject.name} [tool.dvcflow.{key}]")
        yaml_file = root / SETTINGS_FILE
        if yaml_file.is_file():
            for key, table in _read_yaml(yaml_file).items():
                if key not in (RESOURCES, "capacity"):
                    raise ConfigError(f"{yaml_file}: unknown key {key!r} (expected {RESOURCES}, capacity)")
                if key in tables:
                    raise ConfigError(f"{key} is declared in both {tables[key][1]} and {SETTINGS_FILE}")
                tables[key] = (table, f"{SETTINGS_FILE} {key}")
        globs, globs_from = tables.get(RESOURCES, ({}, ""))
        capacity, capacity_from = tables.get("capacity", ({}, ""))
        if not isinstance(globs, Mapping):
            raise ConfigError(f'{globs_from}: expected a table of "GLOB" = {{gpu = 1}}')
        for pattern, value in globs.items():
            _glob_declaration(value, f"{globs_from} {pattern!r}")  # refused here, before anything runs
        return cls(
            tuple(globs.items()),
            tuple(_amounts(capacity, capacity_from).items()) if capacity_from else (),
            globs_from,
            capacity_from,
        )


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read it ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with {RESOURCES} and/or capacity")
    return data


def demands_for(
    stages: Iterable[str], metas: Mapping[str, object], settings: ResourceSettings = ResourceSettings()
) -> dict[str, Demand]:
    """Each stage's demand (only stages that have one): the globs of `settings` that match its name, in
    order (a later glob's amount for the same resource wins, mutex groups add up), then its own `meta`
    (`metas`: stage → what `meta: {dvcflow: ...}` holds), whose `resources` and `mutex`, where given,
    replace the globs'. `ConfigError` on a malformed declaration."""
    globs = [
        (str(pattern), _glob_declaration(value, f"{settings.globs_from} {pattern!r}"))
        for pattern, value in settings.globs
    ]
    demands: dict[str, Demand] = {}
    for stage in stages:
        resources: dict[str, int] = {}
        mutex: tuple[str, ...] = ()
        for pattern, declared in globs:
            if fnmatch.fnmatchcase(stage, pattern):
                resources.update(declared.resources or {})
                mutex = tuple(dict.fromkeys((*mutex, *(declared.mutex or ()))))
        if stage in metas:
            own = _meta_declaration(metas[stage], f"dvc.yaml: stage '{stage}': meta.{META_KEY}")
            resources = resources if own.resources is None else own.resources
            mutex = mutex if own.mutex is None else own.mutex
        demand = Demand(tuple(sorted((k, v) for k, v in resources.items() if v > 0)), tuple(sorted(mutex)))
        if not demand.empty:
            demands[stage] = demand
    return demands


# How much there is, and the checks


def resolve_capacity(
    flags: Mapping[str, int],
    settings: ResourceSettings,
    detect_gpus: Callable[[], tuple[tuple[str, ...], str] | None],
    *,
    need_gpus: bool,
) -> Capacity:
    """Flags over `[tool.dvcflow.capacity]`, resource by resource; for `gpu` when neither gives it (and a
    stage needs one: `need_gpus`), the machine's devices (`detect_gpus`: their indices and where they were
    seen, or None). Given a GPU count, the indices are the machine's first ones when it shows enough,
    else 0..N-1."""
    amounts: dict[str, int] = dict(settings.capacity)
    sources = {name: settings.capacity_from for name in amounts}
    for name, amount in flags.items():
        amounts[name], sources[name] = amount, "--resource"
    detected = detect_gpus() if need_gpus or GPU in amounts else None
    devices: tuple[str, ...] = ()
    if GPU in amounts:
        count = amounts[GPU]
        seen = detected[0] if detected else ()
        devices = seen[:count] if len(seen) >= count else tuple(str(index) for index in range(count))
    elif detected is not None and (need_gpus or detected[0]):
        devices, sources[GPU] = detected
        amounts[GPU] = len(devices)
    return Capacity(
        tuple(sorted(amounts.items())),
        devices,
        tuple(sorted((name, source) for name, source in sources.items() if source)),
    )


def check(demands: Mapping[str, Demand], capacity: Capacity, *, on_dask: bool = False) -> None:
    """Every demand fits the capacity: a resource with no capacity, or a stage needing more than all of
    it, is a one-line `ConfigError` naming the stage and the resource (it could never start). `on_dask`:
    the capacity is what the most of a Dask cluster's workers has, and the remedy a worker's resources."""
    for stage, demand in demands.items():
        for resource, amount in demand.resources:
            have = capacity.amount(resource)
            if have is None:
                if on_dask:
                    raise ConfigError(
                        f"stage '{stage}' needs {resource}={amount}, but no Dask worker has "
                        f"{resource.upper()}: start one with --resources {resource.upper()}=N"
                    )
                how = (
                    "no GPU is visible (CUDA_VISIBLE_DEVICES, nvidia-smi -L)"
                    if resource == GPU
                    else f"there is no capacity for {resource!r}"
                )
                raise ConfigError(
                    f"stage '{stage}' needs {resource}={amount}, but {how}: give --resource "
                    f"{resource}=N or set it in [tool.dvcflow.capacity]"
                )
            if amount > have:
                source = capacity.source(resource)
                raise ConfigError(
                    f"stage '{stage}' needs {resource}={amount}, more than the whole capacity "
                    f"({resource}={have}{f', from {source}' if source else ''})"
                )
