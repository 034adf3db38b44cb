"""What `dvcflow deploy --on-change` watches and what it reports: the pipeline's inputs (`WatchList`) and one
change (`Change`), the data a `dvcflow.repository.changed` event carries and a triggered run gets as its
`change` parameter.

Why in `core`: the DVC adapter fills the watch list, the watchers (services) decide with it which file
events count, the Prefect layer puts a change into an event, the deployed flow reads it back from its
parameters and `dvcflow runs` shows it; none of them should import another for these values. Pure data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EVENT = "dvcflow.repository.changed"  # the Prefect event every watcher emits, and the trigger expects
FILES, BRANCH, IMPORTS = "files", "branch", "imports"
KINDS = (FILES, BRANCH, IMPORTS)
MAX_PATHS = 100  # changed paths an event names (the rest are counted): events are small by design


@dataclass(frozen=True)
class WatchList:
    """The pipeline's inputs, as paths relative to the repository root (POSIX separators).

    - `deps`: stage dependencies no stage (nor import) writes: code, data folders, inputs;
    - `params`: params files the stages read;
    - `sources`: data tracked by `.dvc` files (`dvc add`), not imports;
    - `outs`: everything the pipeline writes (stage outputs, imported data): never a change, even under a
      watched folder, or every run would start the next;
    - `imports`: the `.dvc` files of `dvc import` / `dvc import-url` stages.
    """

    deps: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    imports: tuple[str, ...] = ()

    @property
    def watched(self) -> tuple[str, ...]:
        """Every path whose change (or a change below it) counts."""
        return tuple(sorted({*self.deps, *self.params, *self.sources}))

    def counts(self, path: str) -> bool:
        """Whether a change of `path` (relative, POSIX) is a change of the pipeline's inputs."""
        if path.rsplit("/", 1)[-1] == ".gitignore":  # DVC rewrites these next to the outputs it writes
            return False
        return _within(path, self.watched) and not _within(path, self.outs)


def _within(path: str, folders: tuple[str, ...]) -> bool:
    return any(path == folder or path.startswith(folder.rstrip("/") + "/") for folder in folders)


@dataclass(frozen=True)
class Change:
    """One change worth a run: files (`paths`), a remote branch that moved (`branch`, `remote`, `commit`),
    or imports whose source has a newer version (`imports`). `event_id` names the Prefect event that
    carried it; `more` counts changed paths beyond the ones named."""

    kind: str
    paths: tuple[str, ...] = ()
    more: int = 0
    branch: str | None = None
    remote: str | None = None
    commit: str | None = None
    imports: tuple[str, ...] = ()
    event_id: str | None = None

    @classmethod
    def of_files(cls, paths: set[str] | tuple[str, ...]) -> Change:
        ordered = sorted(paths)
        return cls(FILES, paths=tuple(ordered[:MAX_PATHS]), more=max(0, len(ordered) - MAX_PATHS))

    def to_payload(self) -> dict[str, Any]:
        """The event's payload, which the trigger hands to the run as its `change` parameter."""
        payload: dict[str, Any] = {"kind": self.kind}
        if self.paths:
            payload["paths"] = list(self.paths)
        if self.more:
            payload["more"] = self.more
        for key in ("branch", "remote", "commit", "event_id"):
            if getattr(self, key) is not None:
                payload[key] = getattr(self, key)
        if self.imports:
            payload["imports"] = list(self.imports)
        return payload

    @classmethod
    def from_parameter(cls, value: Mapping[str, Any] | None) -> Change | None:
        """The change a run's `change` parameter holds (None for a run no change started). Lenient about
        what it does not know (a custom run may set anything): only `kind` is required."""
        if not value or value.get("kind") not in KINDS:
            return None

        def strings(key: str) -> tuple[str, ...]:
            items = value.get(key) or ()
            return tuple(str(item) for item in items) if isinstance(items, list | tuple) else ()

        def text(key: str) -> str | None:
            item = value.get(key)
            return None if item is None else str(item)

        more = value.get("more")
        return cls(
            kind=str(value["kind"]),
            paths=strings("paths"),
            more=more if isinstance(more, int) else 0,
            branch=text("branch"),
            remote=text("remote"),
            commit=text("commit"),
            imports=strings("imports"),
            event_id=text("event_id"),
        )

    def summary(self, width: int = 3) -> str:
        """One short line: `files data/a.csv, data/b.csv (+3 more)`, `branch main at 1a2b3c4d`,
        `imports data/iris.csv.dvc`."""
        if self.kind == BRANCH:
            where = f"{self.remote}/{self.branch}" if self.remote else str(self.branch)
            return f"branch {where} at {(self.commit or '?')[:8]}"
        items = self.paths if self.kind == FILES else self.imports
        shown = ", ".join(items[:width])
        hidden = len(items) - len(items[:width]) + self.more
        return f"{self.kind} {shown}" + (f" (+{hidden} more)" if hidden else "")
