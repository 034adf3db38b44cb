"""dvcflow's local Prefect server: control (start, stop, status), the server process and its 503 replay.
Never imports `dvcflow.dvc` nor any layer above `proc`."""
