"""`dvcflow metrics`: the pipeline's metrics as a table or JSON."""

from __future__ import annotations

from dvcflow.cli.common import JsonOption, RepoOption


def metrics(repo: RepoOption = None, json: JsonOption = False) -> None:
    """Show the metrics the DVC repository declares in `dvc.yaml`."""
    from dvcflow import dvcrepo, render
    from dvcflow.metrics import read_metrics, require_metrics
    from dvcflow.render.metrics import metrics_table

    snapshot = require_metrics(read_metrics(dvcrepo.find_repo_root(repo)))
    if json:
        render.as_json(snapshot.by_file())
    else:
        metrics_table(snapshot)
