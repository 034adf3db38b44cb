"""`dvcflow deploy`, `trigger`, `runs`, `notify`: the pipeline running without a person at the keyboard."""

from typing import Annotated

import typer

from dvcflow.cli.common import JsonOption, RepoOption, TargetsArgument, capacity_from
from dvcflow.cli.run import JobsOption, KeepGoingOption, PerStageOption, PerStageResourceOption

DebounceOption = Annotated[
    float | None,
    typer.Option(
        "--debounce",
        help="With --on-change: changes less than SECONDS apart start one run, once none came for "
        "SECONDS (default 2).",
        metavar="SECONDS",
        show_default=False,
    ),
]
WatchBranchOption = Annotated[
    str | None,
    typer.Option(
        "--watch-branch",
        help="With --on-change: also run when BRANCH moves on the git remote, for its new commit.",
        metavar="BRANCH",
        show_default=False,
    ),
]
WatchImportsOption = Annotated[
    float | None,
    typer.Option(
        "--watch-imports",
        help="With --on-change: every SECONDS, ask DVC whether a `dvc import`'s source has a newer "
        "version; a run then updates it.",
        metavar="SECONDS",
        show_default=False,
    ),
]

NameOption = Annotated[
    str | None,
    typer.Option(
        "--name", help="Deployment name (default: the repository's folder name).", show_default=False
    ),
]


def deploy(
    targets: TargetsArgument = None,
    repo: RepoOption = None,
    name: NameOption = None,
    cron: Annotated[
        str | None,
        typer.Option("--cron", help="Run on this cron schedule, e.g. '0 3 * * *'.", show_default=False),
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option("--interval", help="Run every SECONDS seconds.", metavar="SECONDS", show_default=False),
    ] = None,
    per_stage: PerStageOption = False,
    jobs: JobsOption = None,
    keep_going: KeepGoingOption = False,
    resource: PerStageResourceOption = None,
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            help="Register with this Prefect work pool instead of serving; its workers (`prefect worker "
            "start --pool NAME`, anywhere) run the pipeline at this commit from the git remote, data through "
            "the DVC remote, and push the result as a DVC experiment (see `dvcflow fetch`).",
            show_default=False,
        ),
    ] = None,
    shared_disk: Annotated[
        bool,
        typer.Option(
            "--shared-disk",
            help="With --pool: workers see this repository at this path; they run it in place.",
        ),
    ] = False,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            help="With --pool of a docker or kubernetes pool: the image with dvcflow "
            "(default dvcflow:VERSION).",
            show_default=False,
        ),
    ] = None,
    on_change: Annotated[
        bool,
        typer.Option(
            "--on-change",
            help="Also run when the pipeline's inputs change (stage deps, params files, .dvc-tracked "
            "data): a Prefect trigger on dvcflow's change event, and the watchers (here, or with "
            "--pool: `dvcflow watch`).",
        ),
    ] = False,
    debounce: DebounceOption = None,
    watch_branch: WatchBranchOption = None,
    watch_imports: WatchImportsOption = None,
) -> None:
    """Register this repository's pipeline as a Prefect deployment and serve it until Ctrl-C.

    Its runs start on the schedule, from the UI's Run button, `prefect deployment run` or
    `dvcflow trigger NAME`, and with --on-change when its inputs change. Without --cron/--interval it
    runs on demand only.

    Example: dvcflow deploy --cron '0 3 * * *'; dvcflow deploy train --per-stage --resource gpu=2 --pool gpus
    """
    from dvcflow.cli import render
    from dvcflow.cli.render.deploy import deployment_view, run_event
    from dvcflow.cli.render.watch import change_line, problem_line, watch_command, watching_view
    from dvcflow.services import deploy as library
    from dvcflow.services import watch

    request = library.check_request(
        repo,
        name=name,
        cron=cron,
        interval=interval,
        per_stage=per_stage,
        jobs=jobs,
        keep_going=keep_going,
        pool=pool,
        on_change=on_change,
        debounce=debounce,
        watch_branch=watch_branch,
        watch_imports=watch_imports,
        targets=tuple(targets or ()),
        resources=capacity_from(resource),
    )
    watching = watch.plan(request.root, request.watch) if request.watch is not None else None
    from dvcflow.services import remote_runs

    from_git = remote_runs.check_pool_flags(request, shared_disk=shared_disk, image=image)
    library.connect_lasting(request.root, render.info)
    if request.pool is not None:
        registered = (
            remote_runs.register_from_git(from_git, announce=render.info)
            if from_git is not None
            else library.register_to_pool(request, announce=render.info)
        )
        deployment_view(registered, serving=False)
        if watching is not None:
            watch_command(watching)
        return
    _quiet_served_runs()
    library.serve(
        request,
        on_registered=lambda info: deployment_view(info, serving=True),
        on_run=run_event,
        watching=watching,
        on_watching=watching_view,
        on_change=change_line,
        on_problem=problem_line,
    )
    render.info("Stopped serving.")


def _quiet_served_runs() -> None:
    """This process serves until Ctrl-C: the served runs write their logs to the Prefect API, the terminal
    gets one line per run start and end. A run waiting its turn (on-change runs queue) is no news either:
    "1 scheduled runs skipped (at capacity)" at every poll would be (set on the logger too, for where
    Prefect's logging was set up before: the warm starter)."""
    import logging
    import os

    from dvcflow.core.settings import CONSOLE_LEVEL

    os.environ.setdefault(CONSOLE_LEVEL, "CRITICAL")
    logging.getLogger("prefect.runner").setLevel(logging.WARNING)


def watch_command(
    repo: RepoOption = None,
    debounce: DebounceOption = None,
    watch_branch: WatchBranchOption = None,
    watch_imports: WatchImportsOption = None,
) -> None:
    """Watch this repository's pipeline inputs and send a change event for each change, until Ctrl-C.

    Beside `dvcflow deploy --pool NAME --on-change`: its trigger turns each event into a run that a
    worker of the pool executes. (`dvcflow deploy --on-change` without --pool watches by itself.)

    Example: dvcflow watch --watch-branch main --watch-imports 600
    """
    from dvcflow.cli import render
    from dvcflow.cli.render.watch import change_line, problem_line, watching_view
    from dvcflow.services import deploy as library
    from dvcflow.services import watch
    from dvcflow.services.pipeline import Pipeline

    options = watch.check_options(debounce=debounce, branch=watch_branch, imports_every=watch_imports)
    watching = watch.plan(Pipeline(repo).root, options)
    library.connect_lasting(watching.root, render.info)
    watch.watch_until_signalled(
        watching, on_watching=watching_view, on_change=change_line, on_problem=problem_line
    )
    render.info("Stopped watching.")


def trigger(
    name: Annotated[str, typer.Argument(help="The deployment's name (as given to `dvcflow deploy --name`).")],
    repo: RepoOption = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Wait for the run to end; exit as run-a does (0 Completed, 130 Cancelled, else 1)."
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option("--timeout", help="With --wait: give up after SECONDS.", metavar="SECONDS"),
    ] = 3600.0,
) -> None:
    """Start a run of a deployment now.

    Example: dvcflow trigger my-repo --wait
    """
    from dvcflow.cli import render
    from dvcflow.cli.render.deploy import triggered_view
    from dvcflow.services import deploy as library
    from dvcflow.services.pipeline import Pipeline

    library.check_timeout(timeout)
    library.connect_lasting(Pipeline(repo).root, render.info)
    run = library.trigger(name, wait=wait, timeout=timeout, announce=render.info)
    triggered_view(run)
    raise typer.Exit(run.exit_code if wait else 0)


def runs(
    repo: RepoOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many runs to show.")] = 20,
    all_repos: Annotated[
        bool, typer.Option("--all-repos", help="Runs of every repository on this server, not just this one.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """The recent flow runs of this repository, newest first: run-a/run-b runs and deployment runs.

    Example: dvcflow runs --limit 5; dvcflow runs --all-repos --json
    """
    from dvcflow.cli import render
    from dvcflow.cli.render.deploy import runs_table
    from dvcflow.services import deploy as library
    from dvcflow.services.pipeline import Pipeline
    from dvcflow.services.run_history import check_limit, recent_runs

    check_limit(limit)
    root = Pipeline(repo).root
    library.connect_lasting(root, render.info)
    runs_table(recent_runs(None if all_repos else root, limit=limit), as_json=json_output)


def notify(
    webhook: Annotated[
        str | None,
        typer.Option("--webhook", help="POST a JSON message to this http(s) URL.", show_default=False),
    ] = None,
    slack: Annotated[
        str | None,
        typer.Option("--slack", help="Post to this Slack incoming-webhook URL.", show_default=False),
    ] = None,
    on: Annotated[
        str | None,
        typer.Option(
            "--on",
            help="Final states that notify, comma-separated (default failed,crashed).",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="The notification's name (default: <repo folder>-webhook|slack).",
            show_default=False,
        ),
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List this repository's notifications.")] = False,
    remove: Annotated[
        str | None,
        typer.Option("--remove", help="Remove the notification NAME.", metavar="NAME", show_default=False),
    ] = None,
    repo: RepoOption = None,
    json_output: JsonOption = False,
) -> None:
    """Tell a webhook or Slack when this repository's flow runs end Failed or Crashed (or --on ...).

    A Prefect automation does it on the server, whoever started the run. Run again with the same
    --name to change it.

    Example: dvcflow notify --webhook https://example.com/hook --on failed,crashed,completed
    """
    from dvcflow.cli import render
    from dvcflow.cli.render.deploy import notification_view, notifications_table
    from dvcflow.services import deploy as library
    from dvcflow.services import notify as notifications
    from dvcflow.services.pipeline import Pipeline

    if list_ or remove is not None:
        notifications.check_list_or_remove(list_, remove, webhook=webhook, slack=slack, on=on, name=name)
        library.connect_lasting(Pipeline(repo).root, render.info)
        if list_:
            notifications_table(notifications.list_notifications(repo), as_json=json_output)
        else:
            assert remove is not None
            notification_view(notifications.remove_notification(repo, remove), removed=True)
        return
    request = notifications.check_request(repo, webhook=webhook, slack=slack, on=on, name=name)
    library.connect_lasting(request.root, render.info)
    notification_view(notifications.set_notification(request), removed=False)


def register(app: typer.Typer) -> None:
    """The root app's one line for this module's commands."""
    app.command("deploy")(deploy)
    app.command("watch")(watch_command)
    app.command("trigger")(trigger)
    app.command("runs")(runs)
    app.command("notify")(notify)
