"""What `dvcflow fetch` prints."""

from __future__ import annotations

from dvcflow.cli.render import out
from dvcflow.services.remote_runs import Fetched


def fetched_view(fetched: Fetched) -> None:
    """Which experiment came home, and what is left to do."""
    out.print(
        f"Experiment {fetched.experiment!r} of flow run {fetched.run!r} applied: dvc.lock, params and "
        "metrics are in the workspace (uncommitted).",
        soft_wrap=True,
    )
    if fetched.pulled:
        out.print("Its data is checked out (`dvc pull`).", soft_wrap=True)
    else:
        out.print("Bring its data with: dvc pull   (or run `dvcflow fetch --pull`)", soft_wrap=True)
    out.print("Compare with HEAD: dvcflow metrics --diff", soft_wrap=True)
