"""The stage engine shared by `run-b` and `run-a --per-stage`.

- `graph`: stage nodes, waves, plans (pure data).
- `scheduler`: which stage starts when (`--jobs`, keep-going, failure spread), against a small protocol.
- `executor`: runs ONE stage as DVC would, in this process, and records it through DVC.
- `cache`: the one Prefect cache policy, keyed on DVC's hashes.
- `plugins`: in-process stage functions a repository declares in its pyproject.
- `task`: the one Prefect task that runs a stage, and the launcher that feeds it to the scheduler.

Importing this package imports nothing heavy; each module says what it needs.
"""
