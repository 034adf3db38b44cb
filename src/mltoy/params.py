"""Typed pipeline parameters: the one schema of `params.yaml`.

Errors name the offending key (``split.test_size``) so a typo is found in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ParamsError(ValueError):
    """`params.yaml` is missing, unreadable or invalid; the message names file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SplitParams(_Section):
    test_size: float = Field(gt=0, lt=1, description="Fraction of rows held out for evaluation.")
    random_state: int = Field(ge=0)


class TrainParams(_Section):
    C: float = Field(gt=0, description="Inverse regularisation strength of the logistic regression.")
    max_iter: int = Field(ge=1)
    random_state: int = Field(ge=0)


class EvaluateParams(_Section):
    average: str = Field(default="macro", pattern="^(macro|micro|weighted)$")


class Params(_Section):
    split: SplitParams
    train: TrainParams
    evaluate: EvaluateParams = EvaluateParams()


def _format_error(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    kind = first["type"]
    if kind == "missing":
        return f"{path}: missing key '{key}'"
    if kind == "extra_forbidden":
        return f"{path}: unknown key '{key}'"
    got = first.get("input")
    return f"{path}: {key}: {first['msg'].lower()} (got {got!r})"


def parse_params(raw: Any, source: Path) -> Params:
    """Validate already-parsed YAML data; `source` only names the file in errors."""
    if raw is None:
        raise ParamsError(f"{source}: file is empty")
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_error(source, err)) from None


def load_params(path: Path | str) -> Params:
    """Read and validate a params file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except OSError as err:
        raise ParamsError(f"{path}: cannot read params file ({err.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    return parse_params(raw, path)
