"""`run-a --per-stage --dask-address`, `run-b --dask-address` and `sweep --dask-address`: do the Dask workers
share this disk? If not, the stages (or trials) run in clones (`dvcflow.engine.clone_task`,
`dvcflow.engine.cached_clones`, `dvcflow.flows.sweep`), and this checks, before any flow run, what the
clones need (docs/remote.md).

`plan_clones` asks every worker, in one round trip, whether it has dvcflow (one error line if one lacks it)
and whether it reads a token file just written into this repository (all do: a shared disk, the fast path,
unless `shared_disk=False`); for clones, HEAD must be on the git remote (pushed to a dvcflow ref if not), the
pipeline's files but `dvc.lock` committed, and a DVC default remote set.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dvcflow.core.clones import CloneSource
from dvcflow.core.errors import ConfigError
from dvcflow.dvc import clone_stage, gitsource

PROBE_TIMEOUT_S = 30.0


def ask_workers(address: str, token_path: Path, token: str) -> dict[str, tuple[bool, bool]]:
    """worker → (has dvcflow, reads `token` at `token_path`), asked of every worker of the cluster."""
    from distributed import Client

    def probe(path: str, expected: str) -> tuple[bool, bool]:  # by value: runs without dvcflow there
        import importlib.util

        try:
            with open(path, encoding="utf-8") as handle:
                sees = handle.read() == expected
        except OSError:
            sees = False
        return importlib.util.find_spec("dvcflow") is not None, sees

    with Client(address, timeout=PROBE_TIMEOUT_S) as client:  # type: ignore[no-untyped-call]
        answers: dict[str, Any] = client.run(probe, str(token_path), token)
    return {worker: (bool(answer[0]), bool(answer[1])) for worker, answer in answers.items()}


def plan_clones(
    root: Path,
    address: str,
    shared_disk: bool | None,
    announce: Callable[[str], None],
    unit: str = "stage",
) -> CloneSource | None:
    """None when the stages (`unit`s) run in this repository (the workers see it, or `shared_disk=True`);
    else the commit their clones run, checked and on the git remote."""
    token_path = root / ".dvc" / "tmp" / f"dvcflow-shared-disk-{uuid.uuid4().hex}"
    token = uuid.uuid4().hex
    token_path.parent.mkdir(parents=True, exist_ok=True)
    token_path.write_text(token, encoding="utf-8")
    try:
        workers = ask_workers(address, token_path, token)
    finally:
        token_path.unlink(missing_ok=True)
    if not workers:
        raise ConfigError(
            f"the Dask cluster at {address} has no workers", hint="start some: dask worker ADDRESS"
        )
    lacking = sorted(worker for worker, (has_dvcflow, _) in workers.items() if not has_dvcflow)
    if lacking:
        raise ConfigError(
            f"{len(lacking)} of {len(workers)} Dask workers lack dvcflow: {', '.join(lacking[:3])}"
            + (" ..." if len(lacking) > 3 else ""),
            hint="install it where the workers run: pip install 'dvcflow[dask]'",
        )
    seeing = sum(sees for _, sees in workers.values())
    if shared_disk is None:
        shared_disk = seeing == len(workers)
        announce(
            f"Dask workers see this repository ({seeing} of {len(workers)}): {unit}s run in it"
            if shared_disk
            else f"{len(workers) - seeing} of {len(workers)} Dask workers do not see this repository: "
            f"each {unit} runs in a clone of this commit, its data through the DVC remote"
        )
    if shared_disk:
        return None
    source = clone_stage.check_clone_source(root)
    pushed = gitsource.publish(root, source, f"dask-{source.commit[:12]}")
    if pushed is not None:
        announce(f"Pushed {source.short} to {source.remote} as {pushed} (no branch moved)")
    return CloneSource(source.url, source.commit, source.subdir)
