"""Value types and settings: errors and exit codes, settings, selection, identity, the stage graph and
plan, run and stage records, metric values. Imports no other dvcflow layer, nor Prefect or DVC."""
