"""Resources shared by every run on this machine, through the Prefect server's global concurrency limits.

The scheduler keeps one run within its capacity (`dvcflow.engine.scheduler`). Two runs on one GPU box,
each within its own capacity, would still put two stages on one GPU; so each stage that declares a demand
also holds, while it runs, a slot of a global concurrency limit per resource (`occupy=` the amount)
and per mutex group (a limit of 1). Every process that talks to the same server shares them, and they
show on the UI's Concurrency page, with the task run that holds each slot.

Scope: the machine. A limit is named `dvcflow:<host id>:<resource>` (`dvcflow:<host id>:mutex:<group>`;
the host id of `dvcflow.proc.liveness.host_id`), because what it counts (GPUs, memory, a licence bound to
the host) belongs to the machine, not to one repository: two repositories on one box queue for its GPU
too, and two boxes sharing a server do not wait for each other's.

Each run creates the limits it takes before its first stage (`ensure_limits`), at its capacity. A limit that
exists is the machine's: kept as it is (another run, or a person on the UI, set it), switched on if it was
switched off; a run whose capacity differs says so and keeps it, rather than two runs with different
`--resource` values setting it in turn. A run with a stage that needs more than the limit is refused before
its first stage (it would wait for ever); change or delete the limit to change the machine's capacity. The
limits are taken in one order (by name; `acquisitions`), so two runs never wait for each other in a circle.
A slot is leased (60 s, renewed while the command runs): if the process dies, the server frees it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from uuid import UUID

from dvcflow.core.errors import ConfigError
from dvcflow.core.resources import Capacity, Demand

PREFIX = "dvcflow"
LEASE_S = 60  # the server's minimum lease; renewed while the stage runs


def _host() -> str:
    from dvcflow.proc.liveness import host_id

    return host_id()


def limit_name(resource: str, host: str | None = None) -> str:
    """`dvcflow:<host id>:gpu`: the global concurrency limit counting a resource on this machine."""
    return f"{PREFIX}:{host or _host()}:{resource}"


def mutex_name(group: str, host: str | None = None) -> str:
    """`dvcflow:<host id>:mutex:<group>`: a limit of 1."""
    return f"{PREFIX}:{host or _host()}:mutex:{group}"


def wanted_limits(capacity: Capacity, demands: Mapping[str, Demand]) -> dict[str, int]:
    """Limit name → its limit, for what `demands` take: the capacity of each resource, 1 per mutex group."""
    host = _host()
    wanted: dict[str, int] = {}
    for demand in demands.values():
        for resource, _ in demand.resources:
            amount = capacity.amount(resource)
            if amount is not None:
                wanted[limit_name(resource, host)] = amount
        for group in demand.mutex:
            wanted[mutex_name(group, host)] = 1
    return dict(sorted(wanted.items()))


def most_taken(demands: Mapping[str, Demand]) -> dict[str, int]:
    """Limit name → the most one stage takes of it at once."""
    host = _host()
    most: dict[str, int] = {}
    for demand in demands.values():
        for names, occupy in acquisitions(demand, host):
            for name in names:
                most[name] = max(most.get(name, 0), occupy)
    return most


def ensure_limits(
    capacity: Capacity, demands: Mapping[str, Demand], announce: Callable[[str], None] = lambda _: None
) -> None:
    """Create each limit the run takes at its capacity; keep one that exists (switched on), `announce`
    saying when it differs from this run's capacity. `ConfigError` when a stage needs more than an
    existing limit (it would wait for ever)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    most = most_taken(demands)
    with get_client(sync_client=True) as client:
        for name, limit in wanted_limits(capacity, demands).items():
            try:
                existing = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                with contextlib.suppress(ObjectAlreadyExists):  # another run created it a moment ago
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=limit)
                    )
                continue
            if most.get(name, 0) > existing.limit:
                raise ConfigError(
                    f"a stage needs {most[name]} of the machine's concurrency limit {name}, which is "
                    f"{existing.limit} (this run's capacity: {limit})",
                    hint=f"if the machine has more: prefect gcl update {name} --limit {limit}",
                )
            if not existing.active:
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active=True))
                announce(f"Concurrency limit {name} was switched off: switched on again ({existing.limit})")
            if existing.limit != limit:
                announce(
                    f"Concurrency limit {name} stays {existing.limit}, the machine's as another run or the "
                    f"UI set it; this run's capacity is {limit} (to change it: prefect gcl update {name} "
                    f"--limit {limit})"
                )


def acquisitions(demand: Demand, host: str | None = None) -> list[tuple[list[str], int]]:
    """The calls that take `demand`'s limits: by limit name, consecutive names with the same amount in
    one call (Prefect takes a call's names all at once or none). One order for every run, so two runs
    never wait for each other in a circle."""
    host = host or _host()
    wanted = sorted(
        [(limit_name(resource, host), amount) for resource, amount in demand.resources]
        + [(mutex_name(group, host), 1) for group in demand.mutex]
    )
    calls: list[tuple[list[str], int]] = []
    for name, occupy in wanted:
        if calls and calls[-1][1] == occupy:
            calls[-1][0].append(name)
        else:
            calls.append(([name], occupy))
    return calls


@contextlib.contextmanager
def holding(demand: Demand, task_run: UUID | None = None) -> Iterator[float]:
    """Hold a slot of each limit `demand` takes for the block (`occupy=` its amount, a mutex group's 1;
    see `acquisitions`); yields the seconds it took to get them (the API's round trips, and any wait for
    another run that holds them)."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency.sync import concurrency

    holder = ConcurrencyLeaseHolder(type="task_run", id=task_run) if task_run is not None else None
    started = time.monotonic()
    with contextlib.ExitStack() as held:
        for names, occupy in acquisitions(demand):
            held.enter_context(
                concurrency(
                    names,
                    occupy=occupy,
                    lease_duration=LEASE_S,
                    strict=True,
                    holder=holder,
                    raise_on_lease_renewal_failure=False,  # a missed renewal does not kill the command
                )
            )
        yield time.monotonic() - started
