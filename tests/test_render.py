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


def test_runs_piped_at_80_columns_keep_each_state_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20: the State column was cut to `Comp`/`Cras`/`Runn`."""
    import io
    from datetime import UTC, datetime

    from rich.console import Console

    from dvcflow.cli.render import deploy
    from dvcflow.services.run_history import RunRow

    piped = io.StringIO()
    monkeypatch.setattr(deploy, "out", Console(file=piped, width=80, no_color=True))
    link = "http://127.0.0.1:4200/runs/flow-run/daf84ccf-b0d6-4baa-b3a6-44c7f3811a05"
    flow, started = "Prefect operates DVC pipeline", datetime.now(UTC)
    rows = tuple(
        RunRow("id", flow, "resilient-horse", None, state, started, 3.2, link)
        for state in ("Completed", "Crashed", "Running")
    )
    deploy.runs_table(rows, as_json=False)
    cells = [line.split("│")[4].strip() for line in piped.getvalue().splitlines() if line.count("│") > 4]
    assert [cell for cell in cells if cell] == ["Completed", "Crashed", "Running"]  # a long flow name wraps


@pytest.mark.parametrize("width", [80, 100, 200])
def test_runs_keep_each_link_whole_on_a_line_of_its_own_and_every_column_whole(
    monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    """Issue 20: a Link column folded each link over two lines, and at 100 columns Rich dropped it (and cut
    `Duration`). Each link is now a line of its own under the table, never wrapped, whatever the width."""
    import io
    from datetime import UTC, datetime

    from rich.console import Console

    from dvcflow.cli.render import deploy
    from dvcflow.services.run_history import RunRow

    piped = io.StringIO()
    monkeypatch.setattr(deploy, "out", Console(file=piped, width=width, no_color=True))
    links = [f"http://127.0.0.1:4200/runs/flow-run/daf84ccf-b0d6-4baa-b3a6-44c7f3811a0{i}" for i in range(2)]
    flow, now = "dvcflow pipeline", datetime.now(UTC)
    rows = (
        RunRow("1", flow, "resilient-horse", "nightly", "Completed", now, 13.4, links[0]),
        RunRow("2", flow, "fractal-seahorse", None, "Crashed", now, 3.2, links[1]),
        RunRow("3", flow, "gone-link", None, "Running", None, 0.5, None),
    )
    deploy.runs_table(rows, as_json=False)
    lines = piped.getvalue().splitlines()
    assert lines[-2:] == [f"resilient-horse   {links[0]}", f"fractal-seahorse  {links[1]}"]
    table = lines[:-2]
    assert all(len(line) <= width for line in table), table
    assert any("Duration" in line for line in table) and not any("Link" in line for line in table)
    for whole in ("resilient-horse", "fractal-seahorse", "Completed", "Crashed", "Running", "13.40s"):
        assert any(whole in line for line in table), (whole, table)
