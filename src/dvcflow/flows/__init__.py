"""Prefect flows over a DVC repository. Importing any of these imports Prefect."""
