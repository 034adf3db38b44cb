"""Stages that run in clones on machines that do not share this disk (a Dask cluster), as plain values the
flow, the engine and the DVC adapter pass around (docs/remote.md).

`CloneSource` is where a worker finds the code: git `url` at `commit`, the DVC root at `subdir` in it.
`CloneResult` is what a stage run in a clone sends back: its entry in its `dvc.lock` (the one beside its
`dvc.yaml`: `sub/dvc.lock` for a stage of `sub/dvc.yaml`; the caller writes it into its own copy of that file,
in `dvc repro`'s order) and the contents of its outputs DVC does not cache (`cache: false`, which `dvc push`
does not carry); the cached outputs travel through the DVC remote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CloneSource:
    url: str
    commit: str
    subdir: str = "."


@dataclass(frozen=True)
class CloneResult:
    stage: str  # as `dvc repro` names it from the DVC root: `train`, `sub/dvc.yaml:fetch`
    lock: str  # its lock file, from the DVC root: `dvc.lock`, `sub/dvc.lock`
    key: str  # its entry's key in that file: its name in its `dvc.yaml` (`fetch`, `branch@b0`)
    entry: dict[str, Any]  # the entry, as DVC wrote it in the clone
    uncached: dict[str, bytes] = field(default_factory=dict)  # path from the DVC root → contents
    ran: bool = True  # False: DVC found it up to date in the clone
    host: str = ""
    seconds: dict[str, float] = field(default_factory=dict)  # checkout, pull, run, push
