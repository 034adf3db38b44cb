"""Run a pipeline under Prefect: find the repo, choose the API, run the flow, read it back.

The CLI calls these and renders what they return; they never print.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dvcflow import dvcrepo
from dvcflow.api import connect
from dvcflow.runs import FlowRunRecord
from dvcflow.settings import resolve_server_config


def _prepare(repo: Path | None, ephemeral: bool, announce: Callable[[str], None]) -> tuple[Path, bool]:
    root = dvcrepo.find_repo_root(repo)
    config = resolve_server_config(start=root)
    connection = connect(config, ephemeral=ephemeral, on_server_start=announce)
    announce(connection.description)
    return root, connection.links_survive


def run_option_a(
    repo: Path | None = None,
    *,
    fail_once: bool = False,
    show_metrics: bool = True,
    ephemeral: bool = False,
    announce: Callable[[str], None] = lambda _: None,
) -> FlowRunRecord:
    """Option A: one Prefect task runs `dvc repro`; DVC decides what is up to date."""
    root, keep_link = _prepare(repo, ephemeral, announce)
    from dvcflow.flows.repro import dvc_pipeline_flow
    from dvcflow.runs import execute

    return execute(
        dvc_pipeline_flow,
        keep_link=keep_link,
        repo_root=root,
        fail_once=fail_once,
        show_metrics=show_metrics,
    )
