"""What a command asks for, as a library (`Pipeline`, metrics history, deployments, notifications, the
run history): the CLI is a thin layer over these. Never imports `dvcflow.cli` nor prints."""
