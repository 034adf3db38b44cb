"""Rows of docs/failure-modes.md that no other test proves: bad input that only DVC or the stage sees."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.helpers import dvcflow


def test_run_a_bad_param_value_and_missing_raw_data_fail_with_the_stages_own_words(
    pipeline_repo: Path, client_env: dict[str, str]
) -> None:
    repo, env = pipeline_repo, client_env
    lock = (repo / "dvc.lock").read_bytes()
    params_file = repo / "params.yaml"
    good = params_file.read_text()
    params = yaml.safe_load(good)
    params["split"]["test_size"] = 0
    params_file.write_text(yaml.safe_dump(params))
    bad_param = dvcflow("run-a", cwd=repo, env=env)
    assert bad_param.returncode == 1, bad_param.stderr
    assert "split.test_size: input should be greater than 0 (got 0)" in bad_param.stderr + bad_param.stdout
    assert "Traceback" not in bad_param.stderr + bad_param.stdout
    assert (repo / "dvc.lock").read_bytes() == lock

    params_file.write_text(good)
    (repo / "data/raw/iris.csv").unlink()
    no_raw = dvcflow("run-a", cwd=repo, env=env)  # caught before any flow run, not retried by DVC
    assert no_raw.returncode == 3, no_raw.stderr
    assert no_raw.stderr.splitlines()[0].startswith(
        "Error: data/raw/iris.csv is missing (tracked by data/raw/iris.csv.dvc)"
    )
    assert no_raw.stdout == ""
    assert (repo / "dvc.lock").read_bytes() == lock
