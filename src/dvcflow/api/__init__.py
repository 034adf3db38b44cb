"""Talking to a Prefect API: which one (connect), running a flow and reading it back, tags, UI links,
artifacts, crash marking. Imports `server`, `dvc`, `proc` and `core`, never the engine or above."""
