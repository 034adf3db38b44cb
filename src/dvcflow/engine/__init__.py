"""The stage engine shared by `run-b`, `run-a --per-stage` and sweep trials. Imports `api` and below,
never `flows`, `services` or `cli`.

- `scheduler`: which stage starts when (`--jobs`, keep-going, failure spread), against a small protocol.
- `executor`: runs ONE stage as DVC would, in this process, and records it through DVC.
- `cache`: the one Prefect cache policy, keyed on DVC's hashes.
- `plugins`: in-process stage functions a repository declares in its pyproject.
- `task`: the one Prefect task that runs a stage, and the launcher that feeds it to the scheduler.
- `trials`: a sweep's trial records, its shared session (results, progress, Ctrl-C), the best trial.

Importing this package imports nothing heavy; each module says what it needs.
"""
