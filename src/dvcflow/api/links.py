"""TODO docstring."""

from __future__ import annotations


def flow_run_link(flow_run_id: object) -> str | None:
    """The Prefect UI page of a flow run (None when no UI address is known): the one place that knows
    the UI's URL layout. `flow_run_link("")` is the prefix a server-side template appends an id to."""
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url
    return f"{ui}/runs/flow-run/{flow_run_id}" if ui else None
