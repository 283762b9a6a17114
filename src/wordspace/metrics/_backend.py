"""The array backend of a block: numpy or cupy, found by duck typing so cupy stays optional."""

from types import ModuleType
from typing import Any

import numpy as np


def array_module(x: Any) -> ModuleType:
    """Return the array module (``numpy`` or ``cupy``) that ``x`` belongs to."""
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array, copying from the GPU when ``x`` is a cupy array."""
    if array_module(x) is not np:
        return x.get()
    return np.asarray(x)
