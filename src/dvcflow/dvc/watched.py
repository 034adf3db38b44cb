"""What `dvcflow deploy --on-change` watches, as DVC sees the pipeline: its inputs (`watch_list`), whether an
import's source has a newer version (`outdated_imports`, DVC's own `dvc status` check, dry) and the update
of those imports (`update_imports`, `dvc update`).

Why DVC and not dvcflow's own reading of `dvc.yaml`: templating, `foreach`, `wdir`, params files and the
`.dvc` files of `dvc add` and `dvc import` are DVC's to resolve, and a dependency another stage writes is
an intermediate result, not an input (`Stage.deps` and `Stage.outs` of every stage of the index say which).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dvcflow.core.changes import WatchList
from dvcflow.core.errors import ConfigError, PipelineError
from dvcflow.dvc import commands
from dvcflow.dvc.repository import in_repository, open_repo
from dvcflow.proc.children import CommandResult


def watch_list(root: Path) -> WatchList:
    """The pipeline's inputs, outputs and imports, from DVC's index of `root` (every `dvc.yaml` and `.dvc`
    file), as paths relative to `root`."""
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import DvcException

    repo = open_repo(root)
    try:
        with in_repository(root):
            stages = list(repo.index.stages)
            deps: set[str] = set()
            params: set[str] = set()
            sources: set[str] = set()
            outs: set[str] = set()
            imports: set[str] = set()
            for stage in stages:
                written = _local(root, stage.outs)
                outs.update(written)
                if stage.is_import:  # its dep is the source repository or URL, its out what it fetched
                    imports.add(Path(os.path.relpath(stage.path, root)).as_posix())
                    continue
                if stage.is_data_source:  # `dvc add`: the data itself is the input
                    sources.update(written)
                    continue
                for dep in stage.deps:
                    (params if isinstance(dep, ParamsDependency) else deps).update(_local(root, [dep]))
    except DvcException as err:  # an invalid dvc.yaml: bad input, before anything is registered
        raise ConfigError(f"DVC cannot read the pipeline of {root} ({' '.join(str(err).split())})") from None
    finally:
        repo.close()
    return WatchList(
        deps=tuple(sorted(dep for dep in deps if not _under(dep, outs))),  # not intermediate results
        params=tuple(sorted(params)),
        sources=tuple(sorted(sources)),
        outs=tuple(sorted(outs)),
        imports=tuple(sorted(imports)),
    )


def _under(path: str, folders: Iterable[str]) -> bool:
    return any(path == folder or path.startswith(folder + "/") for folder in folders)


def _local(root: Path, entries: Iterable[Any]) -> set[str]:
    """The repository-relative paths of `entries` (deps or outs) that are files of this workspace."""
    found = set()
    for entry in entries:
        if not getattr(entry, "is_in_repo", False):  # a URL, another repository's file
            continue
        relative = os.path.relpath(entry.fs_path, root)
        if not relative.startswith(".."):
            found.add(Path(relative).as_posix())
    return found


def outdated_imports(root: Path, imports: tuple[str, ...]) -> tuple[str, ...]:
    """The `.dvc` files among `imports` whose source has a newer version: DVC's own check (`dvc status`
    of the import stages, which asks the source repository or URL), dry: nothing is downloaded or written.
    A `PipelineError` when DVC could not check (the source unreachable, DVC's lock held)."""
    if not imports:
        return ()
    lines: list[str] = []
    result = commands.stream_dvc(["status", "--json", *imports], root, lines.append)
    if not result.ok:
        raise commands.failure(result)
    text = "".join(line for line in lines if not line.startswith(("WARNING:", "ERROR:")))
    try:
        status = json.loads(text or "{}")
    except ValueError:
        raise PipelineError(f"`dvc status --json` printed no JSON: {' '.join(lines)[:200]}") from None
    return tuple(sorted(name for name in status if name in imports))


def update_imports(root: Path, imports: tuple[str, ...], on_line: Callable[[str], None]) -> CommandResult:
    """`dvc update` of the given import `.dvc` files: their data fetched at the source's newest version."""
    return commands.stream_dvc(["update", *imports], root, on_line)
