"""A metric per step, read while a trial's stage runs, for `dvcflow sweep --search ... --prune`.

Two layouts, the ones `dvc plots` reads:
- dvclive's: `<dir>/plots/metrics/<name>.tsv` (`dvclive` by default), a `step` column and one named
  after the metric;
- a plots file the pipeline declares (`plots:` at the top of `dvc.yaml` or of a stage) in TSV, CSV or
  JSON (a list of rows, or one key holding it), with a column named after the metric and, optionally,
  a `step` column (else the row's position).

Files are read as they grow: a half-written last line is skipped until it is whole.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

STEP_COLUMN = "step"
DVCLIVE_DIR = "dvclive"
_SUFFIXES = {".tsv": "\t", ".csv": ",", ".json": ""}


def _names(metric: str) -> tuple[str, ...]:
    """What the metric's column may be called: `loss` for `loss`, `metrics.json:loss`, `train.loss`
    or `train/loss` (dvclive writes nested names as folders and the last part as the column)."""
    bare = metric.rpartition(":")[2]
    return tuple(
        dict.fromkeys((bare, bare.replace(".", "/"), bare.rsplit(".", 1)[-1], bare.rsplit("/", 1)[-1]))
    )


def _declared_plots(workspace: Path) -> Iterator[str]:
    """Paths of the plots `dvc.yaml` declares (top level and per stage)."""
    try:
        spec = yaml.safe_load((workspace / "dvc.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return
    if not isinstance(spec, dict):
        return
    entries: list[Any] = list(spec.get("plots") or [])
    for stage in (spec.get("stages") or {}).values():
        if isinstance(stage, dict):
            entries += list(stage.get("plots") or [])
            entries += [out for out in stage.get("outs") or [] if isinstance(out, str)]
    for entry in entries:
        for path in entry if isinstance(entry, dict) else (entry,):
            if isinstance(path, str):
                yield path


def step_files(workspace: Path, metric: str) -> tuple[Path, ...]:
    """Where a trial in `workspace` may write `metric` per step (whether they exist yet or not)."""
    names = _names(metric)
    found: list[Path] = []
    folders = [DVCLIVE_DIR]
    for path in _declared_plots(workspace):
        if Path(path).suffix.lower() in _SUFFIXES:
            found.append(workspace / path)
        elif not Path(path).suffix:  # a folder: dvclive's, under another name
            folders.append(path)
    for folder in dict.fromkeys(folders):
        found += [workspace / folder / "plots" / "metrics" / f"{name}.tsv" for name in names]
    return tuple(dict.fromkeys(found))


def _rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(errors="replace")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError:  # being written
            return []
        if isinstance(data, dict) and len(data) == 1:
            data = next(iter(data.values()))
        return [row for row in data if isinstance(row, dict)] if isinstance(data, list) else []
    if not text.endswith("\n"):  # the last line is being written
        text = text[: text.rfind("\n") + 1]
    return list(csv.DictReader(io.StringIO(text), delimiter=_SUFFIXES.get(suffix, "\t")))


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_steps(files: tuple[Path, ...], metric: str) -> list[tuple[int, float]]:
    """`(step, value)` of `metric` from the first of `files` that has it, in the order written."""
    names = _names(metric)
    for path in files:
        try:
            rows = _rows(path)
        except OSError:
            continue
        column = next((name for name in names if rows and name in rows[0]), None)
        if column is None:
            continue
        steps: list[tuple[int, float]] = []
        for position, row in enumerate(rows):
            value, step = _float(row.get(column)), _float(row.get(STEP_COLUMN, position))
            if value is not None and step is not None:
                steps.append((int(step), value))
        return steps
    return []
