"""The root `dvcflow` app: command groups joined here, and the one place outcomes become exit codes."""

import gc
import os
import sys
import traceback
from typing import Annotated, Any

import typer
from typer import _click
from typer.core import TyperGroup

from dvcflow import __version__
from dvcflow.cli import help_text, lean_help
from dvcflow.core.errors import DvcflowError, ExitCode, exit_code_table

lean_help.install()

DEBUG_ENV = "DVCFLOW_DEBUG"  # user input, read once here: `DVCFLOW_DEBUG=1 dvcflow` is `dvcflow --debug`


def _debug_requested(ctx: _click.Context) -> bool:
    return bool(ctx.params.get("debug")) or os.environ.get(DEBUG_ENV) == "1"


class _ErrorBoundary(TyperGroup):
    """Turns whatever a command raises into one `Error: ...` line and its `ExitCode`.

    With `--debug` (or DVCFLOW_DEBUG=1) the traceback is printed too; the exit code stays the same.
    Commands read the flag through `dvcflow.cli.common.debug_requested`, never through the environment.
    """

    def invoke(self, ctx: _click.Context) -> Any:
        debug = _debug_requested(ctx)
        ctx.meta["dvcflow.debug"] = debug
        try:
            return super().invoke(ctx)
        except DvcflowError as exc:
            from dvcflow.cli import render

            if debug:
                traceback.print_exc()
            render.error(exc)
            if getattr(exc, "abandon_background_work", False):
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(exc.exit_code)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            from dvcflow.cli import render

            if debug:
                traceback.print_exc()
            render.err.print("Interrupted.")
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        except (typer.Exit, typer.Abort, typer.TyperException):  # Typer's own: usage errors, --help
            raise
        except Exception as exc:  # a bug, not bad input: short message unless --debug
            if debug:
                traceback.print_exc()
            print(
                f"Error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)",
                file=sys.stderr,
            )
            raise typer.Exit(ExitCode.INTERNAL) from None


EPILOG = "Exit codes:\n" + exit_code_table()

app = typer.Typer(
    cls=_ErrorBoundary,
    name="dvcflow",
    help="Prefect on top of DVC: run history, retries, a UI and parallel stages for a DVC pipeline.",
    epilog=EPILOG,
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
        bool,
        typer.Option("--debug", help="Show tracebacks as well as one-line errors (or DVCFLOW_DEBUG=1)."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Prefect on top of DVC: run history, retries, a UI and parallel stages for a DVC pipeline."""
    gc.freeze()  # a command starts: the collector, paused by `entry.main`, skips the CLI's own objects
    gc.enable()


def _register() -> None:
    from dvcflow.cli import deploy, metrics, plan, remote, run, server, sweep

    app.command("run-a")(run.run_a)
    app.command("run-b")(run.run_b)
    app.command("plan")(plan.plan)
    app.command("metrics")(metrics.metrics)
    app.command("sweep")(sweep.sweep)
    app.add_typer(server.app, name="server")
    deploy.register(app)
    remote.register(app)
    help_text.unwrap_commands(app)  # docstrings' paragraphs, not their source lines, in --help


_register()


def main() -> None:
    """Console-script entry point."""
    app()
