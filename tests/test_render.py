"""Rendering rules of our own: strict JSON for scripts, rounded numbers for people."""

from __future__ import annotations

import json

import pytest

from dvcflow.cli.render import as_json
from dvcflow.cli.render.metrics import display_value


def test_json_for_scripts_has_no_nan(capsys: pytest.CaptureFixture[str]) -> None:
    as_json({"accuracy": float("nan"), "loss": [0.25, float("inf")], "name": "x"})
    assert json.loads(capsys.readouterr().out) == {"accuracy": None, "loss": [0.25, None], "name": "x"}


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.04999999999999993, "0.05"), (0.9666666666666667, "0.9667"), (1.0, "1"), (3, "3"), ("macro", "macro")],
)
def test_float_noise_is_rounded_for_display(value: object, shown: str) -> None:
    assert display_value(value) == shown
