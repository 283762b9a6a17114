"""Where the work runs: Dask clients and clusters, and the array backend of a worker."""

from wordspace.cluster.client import dask_client, scheduler_address

__all__ = ["dask_client", "scheduler_address"]
