"""Thin Prefect flows over a DVC repository, each calling the engine. Importing any of these imports
Prefect. Never imports `services` or `cli`."""
