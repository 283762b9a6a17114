"""Where the work runs: Dask clients and clusters, and the array backend of a worker."""

from wordspace.cluster.backend import array_backend, on_backend, torch_device, visible_gpus
from wordspace.cluster.client import dask_client, scheduler_address, worker_memory_limit
from wordspace.cluster.recipes import cluster_recipes

__all__ = [
    "array_backend",
    "cluster_recipes",
    "dask_client",
    "on_backend",
    "scheduler_address",
    "torch_device",
    "visible_gpus",
    "worker_memory_limit",
]
