"""The DVC adapter, the only code that imports DVC: the repository, `dvc` commands, the pipeline
session, targets, metrics files, experiments and the DVC child program. Never imports `dvcflow.server`
nor any layer above `proc`."""
