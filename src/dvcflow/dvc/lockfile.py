"""`dvc.lock` written by a session as `dvc repro` writes it, byte for byte, although parallel stages
finish in any order.

Why it matters: `dvc.lock` is committed. A run that wrote its entries in the order stages happened to
finish would change the file (and its diff) from one run to the next, and from what `dvc repro` writes.
Entries already in the file keep their place; new ones go after them in `dvc repro`'s order, which the
session learns when it selects the stages (`LockOrder.remember`). `write_entries` is that rule, once: the
entries that stages run in clones send back (`clone_stage.write_lock`) follow it too, each in its own
`dvc.lock` (a pipeline has one beside each `dvc.yaml`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


class LockOrder:
    """Where each stage's entry goes in its `dvc.lock`; DVC stage objects in, DVC's files written."""

    def __init__(self) -> None:
        self._position: dict[str, dict[str, int]] = {}  # lock file → stage key → place in `dvc repro`'s order
        self._keys_at_start: dict[str, list[str]] = {}  # lock file → its stage keys when first seen

    def remember(self, stages: Iterable[Any]) -> None:
        """`stages` in `dvc repro`'s order (the first order given for a stage is kept)."""
        import yaml
        from dvc.stage import PipelineStage

        for position, stage in enumerate(stages):
            if isinstance(stage, PipelineStage):
                lockfile = stage.dvcfile._lockfile
                self._position.setdefault(lockfile.path, {}).setdefault(stage.name, position)
                if lockfile.path not in self._keys_at_start:
                    try:
                        data = yaml.safe_load(Path(lockfile.path).read_text(encoding="utf-8")) or {}
                    except FileNotFoundError:
                        data = {}
                    self._keys_at_start[lockfile.path] = list((data.get("stages") or {}).keys())

    def dump(self, stage: Any, repo: Any) -> None:
        """`stage.dump(update_pipeline=False)`, except that `dvc.lock` entries new to the file are
        written in `dvc repro`'s order, not in the order parallel stages finished."""
        from dvc.stage import PipelineStage
        from dvc.stage.serialize import to_lockfile

        if not isinstance(stage, PipelineStage):
            stage.dump(update_pipeline=False)
            return
        lockfile = stage.dvcfile._lockfile
        write_entries(
            lockfile.path,
            to_lockfile(stage),
            self._position.get(lockfile.path, {}),
            before=self._keys_at_start.get(lockfile.path, []),
            fs=repo.fs,
        )
        repo.scm_context.track_file(lockfile.relpath)


def write_entries(
    path: str,
    new: Mapping[str, Any],
    position: Mapping[str, int],
    *,
    before: Sequence[str] | None = None,
    fs: Any = None,
) -> None:
    """`new` entries (stage key → entry) into the `dvc.lock` at `path` as `dvc repro` writes them: the keys
    of `before` (default: the file's keys now) keep their place, the others follow by `position` (their
    place in `dvc repro`'s order). The one ordering rule of every `dvc.lock` dvcflow writes: a session's
    stages (`LockOrder.dump`) and the entries stages in clones send back (`clone_stage.write_lock`)."""
    from dvc.utils.serialize import modify_yaml

    with modify_yaml(path, fs=fs) as data:
        if not data:
            data.update({"schema": "2.0"})
        entries = data.get("stages") or {}
        known = {key: place for place, key in enumerate(entries if before is None else before)}
        entries.update(new)
        rank = {key: known.get(key, len(known) + position.get(key, len(entries))) for key in entries}
        data["stages"] = {key: entries[key] for key in sorted(entries, key=rank.__getitem__)}
