"""A CPU stand-in for cupy, to test the GPU code paths where no GPU is present.

Its arrays are numpy arrays of a subclass whose module is ``cupy``, so
`wordspace.metrics._backend.array_module` takes them for cupy arrays and imports the module
installed as ``sys.modules["cupy"]`` (this one); they must be brought to the host with ``.get()``
as cupy's are. Module functions are numpy's, with array results turned into stand-in arrays.
``cupyx.scipy.sparse`` is scipy.sparse.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import scipy.sparse


class ndarray(np.ndarray):  # noqa: N801 - cupy's name
    def get(self) -> np.ndarray:
        return np.array(self, copy=True).view(np.ndarray)


ndarray.__module__ = "cupy"


def _wrap(value: Any) -> Any:
    if isinstance(value, np.ndarray) and not isinstance(value, ndarray):
        return value.view(ndarray)
    if isinstance(value, tuple):
        return tuple(_wrap(item) for item in value)
    return value


class _Module(types.ModuleType):
    ndarray = ndarray

    def __getattr__(self, name: str) -> Any:
        value = getattr(np, name)
        if callable(value) and not isinstance(value, type):

            def wrapped(*args: Any, **kwargs: Any) -> Any:
                return _wrap(value(*args, **kwargs))

            return wrapped
        return value


def install(monkeypatch: Any) -> types.ModuleType:
    """Install the stand-in as ``cupy`` and ``cupyx`` for one test; returns the ``cupy`` module."""
    cupy = _Module("cupy")
    cupyx = types.ModuleType("cupyx")
    cupyx_scipy = types.ModuleType("cupyx.scipy")
    cupyx_scipy.sparse = scipy.sparse
    cupyx.scipy = cupyx_scipy
    for name, module in {
        "cupy": cupy,
        "cupyx": cupyx,
        "cupyx.scipy": cupyx_scipy,
        "cupyx.scipy.sparse": scipy.sparse,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    return cupy
