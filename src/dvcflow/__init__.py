"""dvcflow: Prefect on top of DVC — run history, retries, a UI and parallel stages for a DVC pipeline."""

__version__ = "0.1.0"
