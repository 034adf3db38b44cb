"""The search space of `dvcflow sweep --search`, read from `-S` with DVC's own Hydra override parser.

Hydra's sweep forms are the grammar (DVC's `-S` already accepts them): `choice(a,b)` and the plain
`a,b,c` are a choice, `range(2,10)` integers 2..9 (a float step makes it a choice of its values),
`interval(0.0001,0.1)` a continuous range, `tag(log, interval(...))` or `tag(log, range(...))` the
same on a log scale. A `-S` without a sweep form (`train.seed=7`) is a fixed value every trial gets.

Everything is checked here, before any trial: the params file and key exist, an interval has two
numbers in order, a log scale excludes 0, a grid search has nothing continuous.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvcflow.core.errors import UsageError
from dvcflow.dvc.experiments import Override
from dvcflow.dvc.repository import DEFAULT_PARAMS_FILE

CHOICE, INT, FLOAT, FIXED = "choice", "int", "float", "fixed"
LOG_TAG = "log"
Value = str | int | float | bool | None


@dataclass(frozen=True)
class SearchParam:
    """One `-S` of a search: a params `file` and `key`, and what a trial may set it to."""

    file: str
    key: str
    kind: str  # CHOICE, INT, FLOAT or FIXED
    text: str  # the `-S` as given (after the file prefix), for messages and the study's record
    choices: tuple[Value, ...] = ()  # CHOICE: the values; FIXED: the one value
    low: float = 0.0  # INT and FLOAT: the bounds, both included
    high: float = 0.0
    step: int = 1  # INT only
    log: bool = False
    prefix: str = ""  # "+" for a key to add, as `dvc exp run -S +KEY=...`

    @property
    def label(self) -> str:
        """`train.C`, or `other.yaml:lr` for a params file other than DVC's default (as `Override`)."""
        return self.key if self.file == DEFAULT_PARAMS_FILE else f"{self.file}:{self.key}"

    @property
    def searched(self) -> bool:
        return self.kind != FIXED

    @property
    def continuous(self) -> bool:
        return self.kind == FLOAT

    def grid_values(self) -> tuple[Value, ...]:
        """Every value a grid search tries (not for FLOAT)."""
        if self.kind == INT:
            return tuple(range(int(self.low), int(self.high) + 1, self.step))
        return self.choices

    def override(self, value: Value) -> Override:
        """The `-S KEY=VALUE` a trial with `value` writes, as `apply_overrides` takes it."""
        return Override(self.file, self.key, f"{self.prefix}{self.key}={hydra_value(value)}")


_PLAIN = re.compile(r"^[A-Za-z_][\w.\-/]*$")


def hydra_value(value: Value) -> str:
    """`value` as Hydra's override grammar reads it back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    if _PLAIN.match(value) and value.lower() not in {"true", "false", "null", "nan", "inf"}:
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _param(file: str, text: str, parsed: Any) -> SearchParam:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    key = parsed.key_or_group
    prefix = "+" if parsed.is_add() else ""
    value: Any = parsed.value()
    tags = set(getattr(value, "tags", None) or ())
    unknown = tags - {LOG_TAG}
    where = f"-S {text}"
    if unknown:
        raise UsageError(f"{where}: unknown tag {sorted(unknown)[0]!r}", hint="the one tag known is `log`")
    log = LOG_TAG in tags
    if isinstance(value, IntervalSweep):
        low: Any = value.start
        high: Any = value.end
        if not (_number(low) and _number(high)) or not low < high:
            raise UsageError(f"{where}: an interval needs two numbers, low < high (e.g. interval(0.001,0.1))")
        if log and low <= 0:
            raise UsageError(f"{where}: a log scale needs a range above 0 (this one includes {low:g})")
        return SearchParam(file, key, FLOAT, text, low=float(low), high=float(high), log=log, prefix=prefix)
    if isinstance(value, RangeSweep):
        start: Any = value.start
        stop: Any = value.stop
        step: Any = value.step
        if all(isinstance(x, int) and not isinstance(x, bool) for x in (start, stop, step)):
            values = list(range(start, stop, step))
            if not values or step <= 0:
                raise UsageError(f"{where}: the range has no values (range(A,B) is A..B-1)")
            if log and values[0] <= 0:
                raise UsageError(
                    f"{where}: a log scale needs a range above 0 (this one includes {values[0]})"
                )
            if log and step != 1:
                raise UsageError(f"{where}: a log-scale range needs step 1")
            return SearchParam(
                file, key, INT, text, low=values[0], high=values[-1], step=step, log=log, prefix=prefix
            )
        if log:
            raise UsageError(f"{where}: a log scale needs an integer range or an interval")
        return SearchParam(
            file, key, CHOICE, text, choices=tuple(_float_range(start, stop, step)), prefix=prefix
        )
    if isinstance(value, ChoiceSweep):
        if log:
            raise UsageError(f"{where}: a log scale needs a range or an interval, not a choice")
        choices: tuple[Any, ...] = tuple(value.list)
        if not choices:
            raise UsageError(f"{where}: empty value list")
        if any(isinstance(choice, (dict, list)) for choice in choices):
            raise UsageError(f"{where}: a choice of lists or dicts cannot be searched")
        return SearchParam(file, key, CHOICE, text, choices=tuple(dict.fromkeys(choices)), prefix=prefix)
    if parsed.is_sweep_override():
        raise UsageError(f"{where}: this sweep form cannot be searched")
    return SearchParam(file, key, FIXED, text, choices=(value,), prefix=prefix)


def _float_range(start: float, stop: float, step: float) -> list[float]:
    if step == 0 or (stop - start) / step <= 0:
        return []
    count = math.ceil((stop - start) / step - 1e-9)
    return [round(start + i * step, 12) for i in range(count)]


def parse_search_space(root: Path, set_params: Sequence[str], *, grid: bool) -> tuple[SearchParam, ...]:
    """The search space of `-S` values (`file.yaml:KEY=...` as for `dvc exp run -S`), checked whole.

    Uses DVC's `to_path_overrides` and Hydra's parser (`to_hydra_overrides`), as the grid sweep does;
    the files and keys are checked as there (`experiments.check_values`).
    """
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import to_hydra_overrides
    from hydra.errors import OverrideParseException

    from dvcflow.dvc.experiments import check_values

    if not set_params:
        raise UsageError(
            "give at least one -S KEY=SPACE",
            hint="e.g. dvcflow sweep --search tpe -S 'train.C=interval(0.01,10)'",
        )
    path_overrides = to_path_overrides(set_params)
    params: list[SearchParam] = []
    for file, texts in path_overrides.items():
        for text in texts:
            try:
                (parsed,) = to_hydra_overrides([text])
            except OverrideParseException as err:
                raise UsageError(f"-S {text}: cannot parse the value ({str(err).splitlines()[0]})") from None
            if parsed.is_delete():
                raise UsageError(f"-S {text}: a search cannot delete a key")
            params.append(_param(file, text, parsed))
    check_values(root, {file: [p.text for p in params if p.file == file] for file in path_overrides})
    labels = [param.label for param in params]
    repeated = next((label for label in labels if labels.count(label) > 1), None)
    if repeated is not None:
        raise UsageError(f"-S: {repeated} is given twice")
    if not any(param.searched for param in params):
        raise UsageError(
            "-S: nothing to search (give a choice, range or interval)",
            hint="e.g. -S 'train.C=tag(log, interval(0.01,100))'",
        )
    if grid:
        continuous = next((param for param in params if param.continuous), None)
        if continuous is not None:
            raise UsageError(
                f"-S {continuous.text}: --search grid cannot cover a continuous interval",
                hint="use range(...) or choice(...), or --search tpe|random",
            )
    return tuple(params)


def grid_size(space: Sequence[SearchParam]) -> int:
    return math.prod(len(param.grid_values()) for param in space if param.searched)
