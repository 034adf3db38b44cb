"""`dvcflow fetch`: a run from another machine back into this workspace."""

from typing import Annotated

import typer

from dvcflow.cli.common import RepoOption


def fetch(
    run: Annotated[str, typer.Argument(help="The flow run's name (or id), as `dvcflow runs` shows it.")],
    repo: RepoOption = None,
    pull: Annotated[
        bool, typer.Option("--pull", help="Then bring the experiment's data: `dvc pull`.")
    ] = False,
) -> None:
    """Bring a `deploy --pool` run's result home: its DVC experiment's dvc.lock, params and metrics.

    `dvc exp pull` from the git remote the worker pushed it to, then `dvc exp apply`; with --pull,
    `dvc pull` of its data from the DVC remote.

    Example: dvcflow fetch fractal-seahorse --pull; dvcflow metrics --diff
    """
    from dvcflow.cli import render
    from dvcflow.cli.render.remote import fetched_view
    from dvcflow.services import deploy as library
    from dvcflow.services import remote_runs
    from dvcflow.services.pipeline import Pipeline

    root = Pipeline(repo).root
    library.connect_lasting(root, render.info)
    fetched_view(remote_runs.fetch(root, run, pull=pull, on_line=render.info))


def register(app: typer.Typer) -> None:
    """The root app's one line for this module's commands."""
    app.command("fetch")(fetch)
