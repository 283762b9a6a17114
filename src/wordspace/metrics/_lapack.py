"""The BLAS and LAPACK routines of the CCA finish, called with the GIL released.

scipy's ``scipy.linalg.blas`` and ``lapack`` wrappers hold the GIL for the whole call, so the
finish's threads ran their factorisations and triangular products one at a time (13 x 13 layers
of 768: the whitenings took 0.49-0.57 s on two threads, 0.28-0.30 s with these). scipy exports
the same routines to compiled callers as C function pointers (``cython_blas``, ``cython_lapack``);
ctypes releases the GIL around a foreign call. Matrices are Fortran-ordered float64, changed in
place, and only their lower triangles are read or written.
"""

import ctypes
from functools import cache
from typing import Any

import numpy as np
from scipy.linalg import cython_blas, cython_lapack

_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype = ctypes.c_char_p
_capsule_name.argtypes = [ctypes.py_object]
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


@cache
def _routine(name: str, arguments: int) -> Any:
    """scipy's ``name`` as a ctypes function of ``arguments`` pointers (Fortran passes all
    arguments by reference)."""
    capsule = cython_blas.__pyx_capi__.get(name) or cython_lapack.__pyx_capi__[name]
    address = _capsule_pointer(capsule, _capsule_name(capsule))
    return ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * arguments)(address)


def _call(name: str, *arguments: Any) -> None:
    """Call ``name`` with each argument by reference: arrays as their data, bytes as a
    character, ints as a Fortran integer, floats as a double."""
    held, pointers = [], []
    for argument in arguments:
        if isinstance(argument, np.ndarray):
            if argument.dtype != np.float64 and argument.dtype != np.int32:
                raise TypeError(f"{name}: {argument.dtype} array, expected float64 or int32")
            if argument.ndim == 2 and not argument.flags.f_contiguous:
                raise TypeError(f"{name}: the matrices must be Fortran-ordered")
            pointers.append(argument.ctypes.data)
            continue
        if isinstance(argument, bytes):
            value: Any = ctypes.c_char(argument)
        elif isinstance(argument, int):
            value = ctypes.c_int(argument)
        else:
            value = ctypes.c_double(argument)
        held.append(value)
        pointers.append(ctypes.addressof(value))
    _routine(name, len(arguments))(*pointers)


def _info(name: str, *arguments: Any) -> int:
    """Call the LAPACK routine ``name`` (its last argument is ``info``) and return ``info``."""
    info = np.zeros(1, dtype=np.int32)
    _call(name, *arguments, info)
    if info[0] < 0:
        raise ValueError(f"{name}: argument {-info[0]} is invalid")
    return int(info[0])


def cholesky(matrix: np.ndarray) -> bool:
    """Overwrite the lower triangle of the symmetric ``matrix`` with its Cholesky factor;
    False if it is not positive definite (the matrix is then partly overwritten)."""
    n = matrix.shape[0]
    return _info("dpotrf", b"L", n, matrix, max(n, 1)) == 0


def invert_lower(factor: np.ndarray) -> None:
    """Overwrite the lower-triangular ``factor`` with its inverse."""
    n = factor.shape[0]
    if _info("dtrtri", b"L", b"N", n, factor, max(n, 1)):
        raise np.linalg.LinAlgError("dtrtri: the triangular factor is singular")


def multiply_lower(lower: np.ndarray, x: np.ndarray, right: bool, transpose: bool) -> np.ndarray:
    """``x`` overwritten with ``L x`` (``Lᵀ x`` with ``transpose``), or ``x L`` / ``x Lᵀ`` with
    ``right``, for the lower triangle ``L`` of ``lower``."""
    m, n = x.shape
    side, trans = (b"R" if right else b"L"), (b"T" if transpose else b"N")
    _call("dtrmm", side, b"L", trans, b"N", m, n, 1.0, lower, max(lower.shape[0], 1), x, max(m, 1))
    return x


def smaller_gram(x: np.ndarray) -> np.ndarray:
    """``x xᵀ`` or ``xᵀ x`` of a Fortran-ordered ``x``, whichever is smaller, in the lower
    triangle of a new matrix."""
    rows, columns = x.shape
    size, trans = (rows, b"N") if rows <= columns else (columns, b"T")
    out = np.empty((size, size), order="F")
    inner = columns if trans == b"N" else rows
    _call("dsyrk", b"L", trans, size, inner, 1.0, x, max(rows, 1), 0.0, out, max(size, 1))
    return out


def eigenvalues(matrix: np.ndarray) -> np.ndarray:
    """The eigenvalues, ascending, of the symmetric matrix in the lower triangle of
    ``matrix`` (overwritten), by LAPACK's MRRR driver."""
    n = matrix.shape[0]
    values, found = np.empty(n), np.zeros(1, dtype=np.int32)
    work, iwork = np.empty(26 * max(n, 1)), np.empty(10 * max(n, 1), dtype=np.int32)
    unused, support = np.empty(1), np.empty(2 * max(n, 1), dtype=np.int32)
    arguments = (b"N", b"A", b"L", n, matrix, max(n, 1), 0.0, 0.0, 0, 0, 0.0, found, values)
    if _info("dsyevr", *arguments, unused, 1, support, work, len(work), iwork, len(iwork)):
        raise np.linalg.LinAlgError("dsyevr: the eigenvalues did not converge")
    return values[: found[0]]
