"""Where the work runs: an existing Dask scheduler, or a local cluster sized to this machine.

The scheduler comes from, in order: an explicit address, a scheduler file, Dask's configuration
(``scheduler-address`` in a Dask YAML file or ``DASK_SCHEDULER_ADDRESS``). Without one, a local
cluster of worker processes starts, each with a memory limit, and lives as long as the block.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import dask
from dask.system import CPU_COUNT
from dask.utils import format_bytes, parse_bytes
from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster, Worker, WorkerPlugin
from distributed.system import MEMORY_LIMIT

from wordspace.errors import WordspaceError


def scheduler_address(scheduler: str | None = None) -> str | None:
    """The scheduler to use: the argument, else DASK_SCHEDULER_ADDRESS / Dask's configuration."""
    return (
        scheduler
        or dask.config.get("scheduler-address", None)
        or os.environ.get("DASK_SCHEDULER_ADDRESS")
    )


def worker_memory_limit(memory_limit: str | None, n_workers: int) -> int:
    """Bytes per worker: `memory_limit` ("4GB", "4 GiB", bytes), else this machine's share."""
    if memory_limit is None:
        return MEMORY_LIMIT // max(1, n_workers)
    try:
        limit = parse_bytes(memory_limit)
    except (ValueError, TypeError):
        raise WordspaceError(
            f"--memory-limit {memory_limit!r}: give a size per worker such as 4GB or 2GiB"
        ) from None
    if limit <= 0:
        raise WordspaceError(f"--memory-limit {memory_limit!r}: must be more than 0 bytes")
    return limit


def _not_a_user_error(record: logging.LogRecord) -> bool:
    """False for distributed's "Compute Failed" record of a task that raised a WordspaceError."""
    if not str(record.msg).startswith("Compute Failed"):
        return True
    args = record.args if isinstance(record.args, tuple) else ()
    return not any(str(arg).startswith(f"{WordspaceError.__name__}(") for arg in args)


class UserErrorsUnlogged(WorkerPlugin):
    """Workers leave out of their log the tasks that failed on a `WordspaceError` (bad input).

    The client raises it and the command prints it as one line; distributed would also log it on
    the worker, with the task and its traceback, in the same terminal.
    """

    name = "wordspace-user-errors-unlogged"

    def setup(self, worker: Worker) -> None:
        logging.getLogger("distributed.worker").addFilter(_not_a_user_error)


def _connect(address: str | None, scheduler_file: str | None) -> Client:
    if scheduler_file and not Path(scheduler_file).is_file():
        raise WordspaceError(
            f"--scheduler-file {scheduler_file}: no such file; start the scheduler with "
            f"`dask scheduler --scheduler-file {scheduler_file}` first"
        )
    try:
        if scheduler_file:
            return Client(scheduler_file=scheduler_file)
        return Client(address)
    except (OSError, TimeoutError) as error:
        raise WordspaceError(
            f"--scheduler {address or scheduler_file}: cannot reach the Dask scheduler ({error}); "
            "check the address, or leave --scheduler out to use a local cluster"
        ) from None


def _gpu_cluster(devices: Sequence[str], threads_per_worker: int, memory_limit: int) -> SpecCluster:
    """One worker process per GPU, each seeing only its own device (as ``cuda:0``)."""
    workers = {
        f"gpu-{device}": {
            "cls": Nanny,
            "options": {
                "nthreads": threads_per_worker,
                "memory_limit": memory_limit,
                "env": {"CUDA_VISIBLE_DEVICES": str(device)},
                "resources": {"GPU": 1},
            },
        }
        for device in devices
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    return SpecCluster(workers=workers, scheduler=scheduler)


@contextmanager
def dask_client(
    scheduler: str | None = None,
    *,
    scheduler_file: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | None = None,
    gpus: Sequence[str] | None = None,
    quiet: bool = False,
) -> Iterator[Client]:
    """A client of the given scheduler, or of a local cluster that lives as long as the block.

    `gpus` (device ids, see `visible_gpus`) starts one local worker per GPU pinned with
    ``CUDA_VISIBLE_DEVICES``; with an existing scheduler the workers are whatever it has.
    """
    address = scheduler_address(scheduler)
    if scheduler_file or address:
        client = _connect(address, scheduler_file)
        try:
            client.register_plugin(UserErrorsUnlogged())
            if not quiet:
                n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
                print(
                    f"Dask scheduler {client.scheduler.address}: {n_workers} worker(s); "
                    f"dashboard {client.dashboard_link}"
                )
            yield client
        finally:
            client.close()
        return
    if gpus is not None and not gpus:
        raise WordspaceError("--gpu: no NVIDIA GPU visible here; leave --gpu out to use the CPU")
    n_workers = len(gpus) if gpus else workers or max(1, CPU_COUNT // threads_per_worker)
    limit = worker_memory_limit(memory_limit, n_workers)
    # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which returns freed memory to the OS
    # at once: every large temporary (a model's activations, a block of words) is then faulted
    # in afresh. Measured on MiniLM over the demo: forward 2.55 s with it, 1.95 s without.
    # Without it, freed memory is kept for the next task: a worker stays at its peak working set.
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = (
            _gpu_cluster(gpus, threads_per_worker, limit)
            if gpus
            else LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads_per_worker,
                memory_limit=limit,
                processes=True,
                dashboard_address=":0",
            )
        )
    with cluster, Client(cluster) as client:
        client.register_plugin(UserErrorsUnlogged())
        if not quiet:
            kind = f"GPU worker(s) on devices {','.join(gpus)}" if gpus else "worker(s)"
            print(
                f"local Dask cluster: {n_workers} {kind}, {format_bytes(limit)} memory limit "
                f"each; dashboard {client.dashboard_link}"
            )
        yield client
