"""The root `dvcflow` app: command groups joined here, and the one place errors become exit codes."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from typer import _click
from typer.core import TyperGroup

from dvcflow import __version__
from dvcflow.errors import DvcflowError


class _ErrorBoundary(TyperGroup):
    """Turns a `DvcflowError` raised anywhere below into `Error: ...` and its exit code.

    With `--debug` (or DVCFLOW_DEBUG=1) the traceback is shown instead.
    """

    def invoke(self, ctx: _click.Context) -> Any:
        debug = bool(ctx.params.get("debug")) or os.environ.get("DVCFLOW_DEBUG") == "1"
        try:
            return super().invoke(ctx)
        except DvcflowError as exc:
            if debug:
                raise
            from dvcflow import render

            render.error(exc)
            if getattr(exc, "abandon_background_work", False):
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(exc.exit_code)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            if debug:
                raise
            from dvcflow import render

            render.err.print("Interrupted.")
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_ErrorBoundary,
    name="dvcflow",
    help="Prefect on top of DVC: run history, retries, a UI and parallel stages for a DVC pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"dvcflow {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Prefect on top of DVC: run history, retries, a UI and parallel stages for a DVC pipeline."""
    if debug:
        os.environ["DVCFLOW_DEBUG"] = "1"


def _register() -> None:
    from dvcflow.cli import metrics, plan, run, server

    app.command("run-a")(run.run_a)
    app.command("run-b")(run.run_b)
    app.command("plan")(plan.plan)
    app.command("metrics")(metrics.metrics)
    app.add_typer(server.app, name="server")


_register()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except DvcflowError:  # raised with --debug: let Python print the traceback
        raise
    except Exception as exc:  # a bug, not bad input: short message unless --debug
        if os.environ.get("DVCFLOW_DEBUG") == "1":
            raise
        print(
            f"Error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)", file=sys.stderr
        )
        sys.exit(1)
