"""Analysis results in the store: `/analyses/<name>/<key>`, one small xarray Dataset each.

`name` is the analysis (e.g. `layer_curves`), `key` what it was run on (e.g. `whisper-base__glove`).
A result is written whole and marked complete last, so a reader never sees half of one.
"""

from __future__ import annotations

import os
import re

import xarray as xr
import zarr

from wordspace.errors import WordspaceError
from wordspace.storage.store import COMPLETE, list_groups, zarr_store

ANALYSES = "analyses"
_NAME = re.compile(r"[A-Za-z0-9._-]+")


def analysis_group_path(name: str, key: str) -> str:
    for label, value in (("analysis name", name), ("analysis key", key)):
        if not _NAME.fullmatch(value):
            raise WordspaceError(f"{label} {value!r}: use letters, digits, '.', '_' and '-' only")
    return f"{ANALYSES}/{name}/{key}"


def write_analysis(url: str | os.PathLike, name: str, key: str, results: xr.Dataset) -> xr.Dataset:
    """Store `results` as `/analyses/<name>/<key>`, replacing an earlier result; returns them
    with attributes `analysis` and `key` added."""
    path = analysis_group_path(name, key)
    results = results.assign_attrs(analysis=name, key=key)
    # Fixed-width numpy strings have no Zarr v3 specification; variable-length ones do.
    stored = results.copy()
    for variable in stored.variables:
        if stored[variable].dtype.kind == "U":
            stored[variable] = stored[variable].astype(object)
    stored.assign_attrs({COMPLETE: False}).to_zarr(
        zarr_store(url), group=path, mode="w", zarr_format=3, consolidated=False
    )
    zarr.open_group(zarr_store(url), path=path, mode="r+").attrs[COMPLETE] = True
    return results


def read_analysis(url: str | os.PathLike, name: str, key: str) -> xr.Dataset | None:
    """A stored analysis result, loaded, or None when there is no complete one."""
    path = analysis_group_path(name, key)
    root = zarr.open_group(zarr_store(url, read_only=True), mode="r")
    if path not in root or not root[path].attrs.get(COMPLETE):
        return None
    results = xr.open_zarr(
        zarr_store(url, read_only=True), group=path, consolidated=False, zarr_format=3
    ).load()
    results.attrs.pop(COMPLETE, None)
    return results


def list_analyses(url: str | os.PathLike) -> dict[str, list[str]]:
    """Every analysis name with the keys of its complete results."""
    root = zarr.open_group(zarr_store(url, read_only=True), mode="r")
    found = {}
    for name in list_groups(url, ANALYSES):
        keys = [
            key for key, group in root[f"{ANALYSES}/{name}"].groups() if group.attrs.get(COMPLETE)
        ]
        if keys:
            found[name] = sorted(keys)
    return found
