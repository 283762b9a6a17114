"""In-memory arrays as dask arrays of blocks along one axis: views of the caller's array on the
local schedulers, data scattered once to the workers under a distributed client (so the task
graph holds references to the blocks, not the blocks themselves)."""

from typing import Any

import dask
import dask.array as da
import dask.base


def distributed_client(scheduler: Any = None) -> Any:
    """The distributed client behind ``scheduler`` (default: the one dask computes with now), or
    None for the local schedulers."""
    client = getattr(scheduler or dask.base.get_scheduler(), "__self__", None)
    return client if hasattr(client, "scatter") else None


def in_memory_blocks(x: Any, size: int, axis: int) -> da.Array:
    """``x`` (numpy or cupy) as a dask array of ``size``-long blocks along ``axis``.

    Locally the blocks are views of ``x`` (``da.from_array`` and dask's slicing would copy it).
    A cluster would otherwise receive the whole array inside the graph, through its scheduler.
    """
    starts = range(0, max(x.shape[axis], 1), size)
    pieces = [x[(slice(None),) * axis + (slice(start, start + size),)] for start in starts]
    client = distributed_client()
    if client is not None:
        values = client.scatter(pieces, hash=False)
    else:
        values = [dask.delayed(piece, pure=False) for piece in pieces]
    meta = x[(slice(0, 0),) * x.ndim]
    blocks = [
        da.from_delayed(value, piece.shape, dtype=x.dtype, meta=meta)
        for value, piece in zip(values, pieces, strict=True)
    ]
    return da.concatenate(blocks, axis=axis) if len(blocks) > 1 else blocks[0]
