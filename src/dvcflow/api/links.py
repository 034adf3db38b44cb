"""Links to the Prefect UI, built in one place.

The UI's URL layout is Prefect's and may change; only this module knows it. A link is built from this
client's UI address (Prefect's `ui_url` setting, derived from the API URL unless set), and is None when
none is known.
"""

from __future__ import annotations


def flow_run_link(flow_run_id: object) -> str | None:
    """The Prefect UI page of a flow run (None when no UI address is known). `flow_run_link("")` is the
    prefix a server-side template appends an id to."""
    return _link(f"runs/flow-run/{flow_run_id}")


def deployment_link(deployment_id: object) -> str | None:
    """The Prefect UI page of a deployment (None when no UI address is known)."""
    return _link(f"deployments/deployment/{deployment_id}")


def _link(path: str) -> str | None:
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url
    return f"{ui}/{path}" if ui else None
