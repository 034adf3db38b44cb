"""Moved to `dvcflow.engine.resources` (deployed flows put their run's resources together on the worker)."""

from dvcflow.engine.resources import dask_capacity, resources_for, share

__all__ = ["dask_capacity", "resources_for", "share"]
