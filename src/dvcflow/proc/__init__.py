"""Process control, written once: children (start, stream, stop-then-kill), the tether shim, liveness,
the run lock, GC pauses and the generic fork server. Imports only `dvcflow.core`; never Prefect or DVC."""
