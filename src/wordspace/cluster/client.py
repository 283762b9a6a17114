"""Where the work runs: an existing Dask scheduler, or a local cluster sized to this machine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from distributed import Client, LocalCluster


def scheduler_address(scheduler: str | None = None) -> str | None:
    """The scheduler to use: the argument, else DASK_SCHEDULER_ADDRESS / Dask's configuration."""
    return (
        scheduler
        or dask.config.get("scheduler-address", None)
        or os.environ.get("DASK_SCHEDULER_ADDRESS")
    )


@contextmanager
def dask_client(
    scheduler: str | None = None,
    *,
    scheduler_file: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | None = None,
    quiet: bool = False,
) -> Iterator[Client]:
    """A client of the given scheduler, or of a local cluster that lives as long as the block."""
    address = scheduler_address(scheduler)
    if scheduler_file or address:
        client = (
            Client(address, scheduler_file=scheduler_file)
            if not scheduler_file
            else Client(scheduler_file=scheduler_file)
        )
        try:
            yield client
        finally:
            client.close()
        return
    n_workers = workers or max(1, (os.cpu_count() or 1) // threads_per_worker)
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            memory_limit=memory_limit or "auto",
            processes=True,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        if not quiet:
            print(f"local Dask cluster: {n_workers} worker(s); dashboard {client.dashboard_link}")
        yield client
