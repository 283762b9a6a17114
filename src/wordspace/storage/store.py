"""The store: one Zarr (format 3) hierarchy per corpus, at a local path or any fsspec URL.

Layout::

    /                       word table: coordinates on dims `word` (one per token) and `utt`
    /models/<name>          `embedding` (layer, word, dim), `layer` names, `block_complete`
    /comparisons/<a>__<b>   results with dims (layer_a, layer_b, ...)

Writes that users wait for are atomic or resumable: the word table is written beside the store
and moved into place (local) or marked complete last (object storage); embeddings are written a
block of words at a time, each block marked complete after its data.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
import zarr.api.asynchronous
from zarr.core.sync import sync  # runs coroutines on zarr's own I/O loop
from zarr.storage import FsspecStore

from wordspace.errors import WordspaceError
from wordspace.storage.local import DirectWriteLocalStore
from wordspace.storage.shard_reads import raw_embedding_blocks
from wordspace.storage.word_table import WordTable, write_columns

COMPLETE = "wordspace_complete"
SCHEMA_VERSION = 1
EMBEDDING_CHUNK_WORDS = 1024
MAX_WORDS_PER_BLOCK = 16_384


def is_local(url: str | os.PathLike) -> bool:
    """Whether `url` names a local path (plain path or file://)."""
    text = str(url)
    return "://" not in text or text.startswith("file://")


def _local_path(url: str | os.PathLike) -> Path:
    return Path(str(url).removeprefix("file://"))


def zarr_store(url: str | os.PathLike, read_only: bool = False) -> zarr.abc.store.Store:
    """A Zarr store object for a local path or an fsspec URL (s3://, gs://, memory://, ...)."""
    if is_local(url):
        return DirectWriteLocalStore(_local_path(url), read_only=read_only)
    return FsspecStore.from_url(str(url), read_only=read_only)


def store_exists(url: str | os.PathLike) -> bool:
    """Whether a complete word table is stored at `url`."""
    return sync(_holds_word_table(zarr_store(url, read_only=True)))


async def _holds_word_table(zarr_root: zarr.abc.store.Store) -> bool:
    try:
        root = await zarr.api.asynchronous.open_group(store=zarr_root, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        return False
    return bool(root.attrs.get(COMPLETE))


def write_word_table(url: str | os.PathLike, table: WordTable) -> bool:
    """Create the store with `table`; False when it already holds this very corpus.

    A store that holds a different corpus is an error; a half-written one is replaced.
    """
    fingerprint = table.fingerprint()
    if store_exists(url):
        existing = zarr.open_group(zarr_store(url, read_only=True), mode="r").attrs
        if existing.get("fingerprint") == fingerprint:
            return False
        raise WordspaceError(
            f"{url}: store already holds a different corpus ({existing.get('n_words')} words); "
            "choose another --store path or delete it"
        )
    attrs = {
        **table.attrs,
        "fingerprint": fingerprint,
        "n_words": table.n_words,
        "schema_version": SCHEMA_VERSION,
    }

    def write(target: zarr.abc.store.Store) -> None:
        group = zarr.open_group(target, mode="w", zarr_format=3)
        write_columns(group, table)
        group.attrs.update(attrs)
        group.attrs[COMPLETE] = True

    if is_local(url):
        final = _local_path(url)
        partial = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")
        try:
            write(DirectWriteLocalStore(partial))
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return True
    try:
        write(zarr_store(url))
    except BaseException:
        _remove_remote(url)
        raise
    return True


def _remove_remote(url: str) -> None:
    import fsspec

    filesystem, path = fsspec.core.url_to_fs(url)
    if filesystem.exists(path):
        filesystem.rm(path, recursive=True)


def _require_store(url: str | os.PathLike) -> None:
    if not store_exists(url):
        raise _no_word_table(url)


def _no_word_table(url: str | os.PathLike) -> WordspaceError:
    return WordspaceError(
        f"{url}: no word table here; create the store first with "
        "`wordspace index CORPUS --alignments ALIGN --store STORE`"
    )


def open_word_table(url: str | os.PathLike) -> xr.Dataset:
    """The word table, lazily, as dask-backed coordinates (whole columns at once:
    `read_word_columns`)."""
    _require_store(url)
    return xr.open_zarr(zarr_store(url, read_only=True), consolidated=False, zarr_format=3)


def read_word_columns(
    url: str | os.PathLike, names: list[str]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The root's attributes and the named word-table columns, whole, read concurrently."""
    try:
        attrs, columns = sync(_read_arrays(zarr_store(url, read_only=True), "", names))
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        raise _no_word_table(url) from None
    if not attrs.get(COMPLETE):
        raise _no_word_table(url)
    return attrs, columns


async def _read_arrays(
    zarr_root: zarr.abc.store.Store, path: str, names: list[str]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A group's attributes and the named arrays in it, whole, read concurrently."""
    group = await zarr.api.asynchronous.open_group(store=zarr_root, path=path, mode="r")
    arrays = await asyncio.gather(*(group.getitem(name) for name in names))
    values = await asyncio.gather(*(array.getitem(...) for array in arrays))
    return dict(group.attrs), dict(zip(names, values, strict=True))


def root_attrs(url: str | os.PathLike) -> dict[str, Any]:
    """The store root's attributes (corpus root, fingerprint, word count)."""
    _require_store(url)
    return dict(zarr.open_group(zarr_store(url, read_only=True), mode="r").attrs)


def model_group_path(model: str) -> str:
    return f"models/{model}"


def words_per_block(n_words: int) -> int:
    """Words written per task: about 16 blocks for small stores, capped for large ones."""
    per_block = -(-n_words // 16)
    per_block = -(-per_block // EMBEDDING_CHUNK_WORDS) * EMBEDDING_CHUNK_WORDS
    return int(min(MAX_WORDS_PER_BLOCK, max(EMBEDDING_CHUNK_WORDS, per_block)))


def embedding_chunks(
    block_words: int, dim: int
) -> tuple[tuple[int, int, int], tuple[int, int, int] | None]:
    """Zarr chunks and shards of a model's `embedding`: one layer by up to 1,024 words, in
    shards of one extraction block (None when a block is a single chunk)."""
    chunk_words = min(EMBEDDING_CHUNK_WORDS, block_words)
    shards = (1, block_words, dim) if block_words > chunk_words else None
    return (1, chunk_words, dim), shards


def create_embedding(
    url: str | os.PathLike,
    model: str,
    *,
    layer_names: list[str],
    n_words: int,
    dim: int,
    dtype: str,
    block_words: int,
    attrs: dict[str, Any],
) -> bool:
    """Create `/models/<model>`, or check that the existing one has the same shape and settings;
    True when it was created (so every block is still to do)."""
    shape = (len(layer_names), n_words, dim)
    return sync(_create_model_group(url, model, shape, dtype, block_words, layer_names, attrs))


async def _create_model_group(
    url: str | os.PathLike,
    model: str,
    shape: tuple[int, int, int],
    dtype: str,
    block_words: int,
    layer_names: list[str],
    attrs: dict[str, Any],
) -> bool:
    """The model group and its arrays, their metadata written concurrently, unless it exists.

    The group's `block_words` attribute is written last: a group without it is a creation that
    was interrupted, and is created again."""
    # Checked before opening for writing, which would create the folder.
    if not await _holds_word_table(zarr_store(url, read_only=True)):
        raise _no_word_table(url)
    root = await zarr.api.asynchronous.open_group(store=zarr_store(url), mode="r+")
    path = model_group_path(model)
    if await root.contains(path):
        existing_group = await root.getitem(path)
        if "block_words" in existing_group.attrs:
            existing = await existing_group.getitem("embedding")
            existing_block = existing_group.attrs["block_words"]
            if (existing.shape, str(existing.dtype), existing_block) != (shape, dtype, block_words):
                raise WordspaceError(
                    f"{url}: model group {model!r} exists with another shape, dtype or block "
                    f"size ({existing.shape}, {existing.dtype}); "
                    f"pass --name to store this run under another name, or delete {path} first"
                )
            return False
    group = await root.create_group(path, overwrite=True)
    n_blocks = -(-shape[1] // block_words)
    chunks, shards = embedding_chunks(block_words, shape[2])
    flags = {"shape": (n_blocks,), "chunks": (1,), "dimension_names": ("block",)}
    _, layer, _, _ = await asyncio.gather(
        group.create_array(
            "embedding",
            shape=shape,
            dtype=dtype,
            chunks=chunks,
            shards=shards,
            # Model activations barely compress (zstd saves 7-10 %) and compressing them took
            # longer than a small text model's forward pass: stored raw, at disk speed.
            compressors=None,
            fill_value=np.nan,
            dimension_names=("layer", "word", "dim"),
        ),
        group.create_array("layer", shape=shape[:1], dtype=str, dimension_names=("layer",)),
        # One chunk per flag, so concurrent writers of different blocks never share an object.
        group.create_array("block_complete", dtype="uint8", fill_value=0, **flags),
        group.create_array("block_missing_words", dtype="int64", fill_value=0, **flags),
    )
    await layer.setitem(slice(None), np.asarray(layer_names, dtype=object))
    await group.update_attributes({**attrs, "block_words": block_words, "n_blocks": n_blocks})
    return True


def block_bounds(url: str | os.PathLike, model: str) -> list[tuple[int, int]]:
    """[start, stop) word range of every block of the model's array."""
    group = zarr.open_group(zarr_store(url, read_only=True), path=model_group_path(model), mode="r")
    n_words = group["embedding"].shape[1]
    block_words = int(group.attrs["block_words"])
    return [(start, min(start + block_words, n_words)) for start in range(0, n_words, block_words)]


def incomplete_blocks(url: str | os.PathLike, model: str) -> list[int]:
    """Indices of the blocks not yet marked complete."""
    complete, _ = block_marks(url, model)
    return [int(index) for index in np.flatnonzero(~complete)]


def block_marks(url: str | os.PathLike, model: str) -> tuple[np.ndarray, np.ndarray]:
    """Per block: whether it is marked complete, and the words it left NaN (0 until written)."""
    names = ["block_complete", "block_missing_words"]
    _, marks = sync(_read_arrays(zarr_store(url, read_only=True), model_group_path(model), names))
    return marks["block_complete"].astype(bool), marks["block_missing_words"]


def write_embedding_block(
    url: str | os.PathLike, model: str, block: int, values: np.ndarray
) -> None:
    """Write (layers, block words, dim) into block `block`, then mark it complete."""
    sync(_write_block(zarr_store(url), model_group_path(model), block, values))


async def _write_block(
    zarr_root: zarr.abc.store.Store, path: str, block: int, values: np.ndarray
) -> None:
    group = await zarr.api.asynchronous.open_group(store=zarr_root, path=path, mode="r+")
    embedding, missing, complete = await asyncio.gather(
        *(group.getitem(name) for name in ("embedding", "block_missing_words", "block_complete"))
    )
    start = block * int(group.attrs["block_words"])
    stop = start + values.shape[1]
    if values.shape != (embedding.shape[0], stop - start, embedding.shape[2]):
        raise ValueError(f"block {block} has shape {values.shape}, expected {embedding.shape}")
    # Blocks are written whole: zarr's default first compares every chunk with the fill value, a
    # pass over the block (with temporaries) that only serves to skip all-NaN chunks.
    embedding = embedding.with_config({"write_empty_chunks": True})
    region = (slice(None), slice(start, stop), slice(None))
    await embedding.setitem(region, values.astype(embedding.dtype, copy=False))
    n_missing = int(np.isnan(values[0, :, 0]).sum())
    await asyncio.gather(missing.setitem(block, n_missing), complete.setitem(block, 1))


def model_attrs(url: str | os.PathLike, model: str) -> dict[str, Any]:
    group = zarr.open_group(zarr_store(url, read_only=True), path=model_group_path(model), mode="r")
    return dict(group.attrs)


def update_model_attrs(url: str | os.PathLike, model: str, attrs: dict[str, Any]) -> None:
    group = zarr.open_group(zarr_store(url), path=model_group_path(model), mode="r+")
    group.update_attributes(attrs)  # one metadata write; attrs.update writes once per key


def list_groups(url: str | os.PathLike, parent: str) -> list[str]:
    """Names of the groups under `parent` ('models' or 'comparisons')."""
    root = zarr.open_group(zarr_store(url, read_only=True), mode="r")
    if parent not in root:
        return []
    return sorted(name for name, _ in root[parent].groups())


def open_embedding(url: str | os.PathLike, model: str) -> xr.DataArray:
    """The model's `embedding` (layer, word, dim) as a lazy DataArray with the word coordinates,
    in Dask chunks of one layer by one block of words (see `open_embedding_group`)."""
    if model not in list_groups(url, "models"):
        known = ", ".join(list_groups(url, "models")) or "none yet"
        raise WordspaceError(
            f"{url}: no model {model!r} in the store (extracted: {known}); "
            f"run `wordspace extract {url} --model {model}` first"
        )
    attrs = model_attrs(url, model)
    embedding = open_embedding_group(url, model_group_path(model))
    table = open_word_table(url)
    word_coords = {name: table[name] for name in table.coords if table[name].dims == ("word",)}
    embedding = embedding.assign_coords(word_coords)
    embedding.attrs = attrs
    return embedding.rename(model)


def open_embedding_group(url: str | os.PathLike, group: str = "") -> xr.DataArray:
    """The `embedding` array of the Zarr group at `group`, lazily, in Dask chunks of one layer by
    one shard of words (the unit it was written in). A local, uncompressed array is read
    straight from its files (`shard_reads`); any other through zarr."""
    zarr_root = zarr_store(url, read_only=True)
    array = zarr.open_array(zarr_root, path=f"{group}/embedding".lstrip("/"), mode="r")
    block_words = (array.shards or array.chunks)[1]
    embedding = xr.open_zarr(
        zarr_root,
        group=group or None,
        consolidated=False,
        zarr_format=3,
        chunks={"layer": 1, "word": block_words, "dim": -1},
    )["embedding"]
    raw = raw_embedding_blocks(_local_path(url) / array.path, array) if is_local(url) else None
    return embedding if raw is None else embedding.copy(data=raw)


def comparison_group_path(model_a: str, model_b: str) -> str:
    return f"comparisons/{model_a}__{model_b}"


def write_comparison(
    url: str | os.PathLike, model_a: str, model_b: str, results: xr.Dataset
) -> xr.Dataset:
    """Merge `results` into `/comparisons/<a>__<b>` (its variables replace same-named ones)."""
    path = comparison_group_path(model_a, model_b)
    existing = read_comparison(url, model_a, model_b)
    if existing is not None:
        kept = existing[[name for name in existing.data_vars if name not in results.data_vars]]
        attrs = {**existing.attrs, **results.attrs}
        results = xr.merge([kept, results], compat="override", join="outer")
        results.attrs = attrs
    results = variable_length_strings(results).assign_attrs({COMPLETE: False})
    results.to_zarr(zarr_store(url), group=path, mode="w", zarr_format=3, consolidated=False)
    zarr.open_group(zarr_store(url), path=path, mode="r+").attrs[COMPLETE] = True
    return results


def variable_length_strings(dataset: xr.Dataset) -> xr.Dataset:
    """Fixed-width unicode variables as variable-length strings (zarr v3 has no spec for `<U`)."""
    converted = {
        name: variable.astype(object)
        for name, variable in dataset.variables.items()
        if variable.dtype.kind == "U"
    }
    return dataset.assign_coords(
        {name: value for name, value in converted.items() if name in dataset.coords}
    ).assign({name: value for name, value in converted.items() if name not in dataset.coords})


def read_comparison(url: str | os.PathLike, model_a: str, model_b: str) -> xr.Dataset | None:
    """The stored results of a comparison, loaded (they are small), or None."""
    path = comparison_group_path(model_a, model_b)
    root = zarr.open_group(zarr_store(url, read_only=True), mode="r")
    if path not in root or not root[path].attrs.get(COMPLETE):
        return None
    return xr.open_zarr(
        zarr_store(url, read_only=True), group=path, consolidated=False, zarr_format=3
    ).load()
