"""The array backend a worker computes with: numpy blocks on CPUs, cupy blocks on GPUs.

The metrics find the backend of each block by duck typing (`wordspace.metrics._backend`), so
moving a comparison to the GPU is only a matter of handing them dask arrays whose blocks are
cupy arrays: `on_backend` does that conversion lazily, block by block, on the workers. Extraction
runs its model with torch on `torch_device`: with one worker per GPU pinned by
``CUDA_VISIBLE_DEVICES``, ``cuda`` is that worker's own GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from types import ModuleType
from typing import TypeVar

import dask.array as da
import numpy as np
import xarray as xr

from wordspace.errors import WordspaceError

Lazy = TypeVar("Lazy", da.Array, xr.DataArray)


def array_backend(gpu: bool) -> ModuleType:
    """numpy, or cupy when `gpu` (a clear error when cupy is not installed)."""
    if not gpu:
        return np
    try:
        import cupy
    except ImportError:
        raise WordspaceError(
            "--gpu: cupy is not installed; install the build for your CUDA version "
            "(e.g. `pip install cupy-cuda12x`) on the client and every worker"
        ) from None
    return cupy


def on_backend(x: Lazy, gpu: bool) -> Lazy:
    """`x` (a dask array or dask-backed DataArray) with every block on the chosen backend."""
    xp = array_backend(gpu)
    data = x.data if isinstance(x, xr.DataArray) else x
    if not isinstance(data, da.Array):
        raise WordspaceError(
            f"expected a dask-backed array to move to {xp.__name__}, got {type(data)}"
        )
    if xp is np:
        return x
    meta = xp.empty((0,) * data.ndim, dtype=data.dtype)
    moved = data.map_blocks(xp.asarray, dtype=data.dtype, meta=meta)
    return x.copy(data=moved) if isinstance(x, xr.DataArray) else moved


def torch_device(gpu: bool) -> str:
    """The torch device a worker extracts on: its (pinned) GPU, or the CPU."""
    return "cuda" if gpu else "cpu"


def visible_gpus() -> list[str]:
    """Ids of the NVIDIA GPUs this process may use: CUDA_VISIBLE_DEVICES, else nvidia-smi's."""
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
    if pinned is not None:
        return [device.strip() for device in pinned.split(",") if device.strip() not in ("", "-1")]
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return listing.stdout.split() if listing.returncode == 0 else []
