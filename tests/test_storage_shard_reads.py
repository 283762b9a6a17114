"""The raw shard reader gives exactly what zarr gives, or steps aside for zarr."""

from pathlib import Path

import numpy as np
import pytest
import zarr

from wordspace.errors import WordspaceError
from wordspace.storage.shard_reads import raw_embedding_blocks
from wordspace.storage.store import open_embedding_group

LAYERS, WORDS, DIM = 3, 1000, 24  # 1,000 words: the last block of 384 is cut short


def _values(dtype: str = "float32") -> np.ndarray:
    values = np.random.default_rng(0).standard_normal((LAYERS, WORDS, DIM)).astype(dtype)
    values[:, 100:103] = np.nan  # words a model could not represent
    return values


def _store(folder: Path, values: np.ndarray | None = None, **settings) -> zarr.Array:
    """An `embedding` written by zarr into ``folder``, as `create_embedding` lays it out unless
    ``settings`` say otherwise."""
    layout = {"chunks": (1, 128, DIM), "shards": (1, 384, DIM), "compressors": None}
    array = zarr.create_group(folder).create_array(
        "embedding",
        shape=(LAYERS, WORDS, DIM),
        dtype="float32" if values is None else values.dtype,
        fill_value=np.nan,
        dimension_names=("layer", "word", "dim"),
        **{**layout, **settings},
    )
    if values is not None:
        array[:] = values
    return zarr.open_array(folder / "embedding", mode="r")


def _read(folder: Path, array: zarr.Array) -> np.ndarray:
    blocks = raw_embedding_blocks(folder / "embedding", array)
    assert blocks is not None
    block_words = (array.shards or array.chunks)[1]
    assert blocks.chunks[1] == tuple(np.diff([*range(0, WORDS, block_words), WORDS]))
    return blocks.compute(scheduler="sync")


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"serializer": zarr.codecs.BytesCodec(endian="little")},
        {"shards": None, "chunks": (1, 384, DIM)},
    ],
    ids=["index at the end", "explicit little-endian bytes", "one chunk per block"],
)
def test_raw_reads_equal_zarr(tmp_path: Path, settings: dict) -> None:
    array = _store(tmp_path, _values(), **settings)
    np.testing.assert_array_equal(_read(tmp_path, array), array[:])


def test_index_at_the_start_and_float16(tmp_path: Path) -> None:
    sharding = zarr.codecs.ShardingCodec(
        chunk_shape=(1, 128, DIM),
        codecs=[zarr.codecs.BytesCodec()],
        index_location="start",
    )
    array = zarr.create_array(
        tmp_path / "embedding",
        shape=(LAYERS, WORDS, DIM),
        chunks=(1, 384, DIM),
        dtype="float16",
        fill_value=np.nan,
        serializer=sharding,
        compressors=None,
    )
    array[:] = _values("float16")
    array = zarr.open_array(tmp_path / "embedding", mode="r")
    read = _read(tmp_path, array)
    assert read.dtype == np.float16
    np.testing.assert_array_equal(read, array[:])


def test_unwritten_blocks_and_inner_chunks_read_as_the_fill_value(tmp_path: Path) -> None:
    array = zarr.create_array(
        tmp_path / "embedding",
        shape=(LAYERS, WORDS, DIM),
        chunks=(1, 128, DIM),
        shards=(1, 384, DIM),
        dtype="float32",
        fill_value=np.nan,
        compressors=None,
        config={"write_empty_chunks": False},
    )
    values = _values()
    values[:, 128:256] = np.nan  # an inner chunk zarr leaves out of its shard
    array[:, :768] = values[:, :768]  # the last block of every layer is never written
    shard = tmp_path / "embedding" / "c" / "0" / "0" / "0"
    assert shard.stat().st_size < 3 * 128 * DIM * 4  # the NaN inner chunk is not stored
    assert not (tmp_path / "embedding" / "c" / "0" / "2" / "0").exists()
    read = _read(tmp_path, zarr.open_array(tmp_path / "embedding", mode="r"))
    np.testing.assert_array_equal(read, array[:])
    assert np.isnan(read[:, 768:]).all() and np.isnan(read[:, 128:256]).all()


@pytest.mark.parametrize(
    "settings",
    [
        {"compressors": zarr.codecs.ZstdCodec()},
        {"shards": None, "chunks": (1, 384, DIM), "compressors": zarr.codecs.ZstdCodec()},
        {"shards": None, "chunks": (1, 384, 8)},  # a block does not hold whole rows
        {"serializer": zarr.codecs.BytesCodec(endian="big")},
        {
            "shards": None,
            "chunks": (1, 384, DIM),
            "serializer": zarr.codecs.BytesCodec(endian="big"),
        },
    ],
    ids=[
        "compressed shards",
        "compressed chunks",
        "split rows",
        "big-endian shards",
        "big-endian chunks",
    ],
)
def test_zarr_reads_what_is_not_stored_raw(tmp_path: Path, settings: dict) -> None:
    array = _store(tmp_path, _values(), **settings)
    assert raw_embedding_blocks(tmp_path / "embedding", array) is None
    opened = open_embedding_group(tmp_path)
    assert not opened.data.name.startswith("read-raw-embedding")
    np.testing.assert_array_equal(opened.values, array[:])


def test_a_local_store_is_opened_with_the_raw_reader(tmp_path: Path) -> None:
    array = _store(tmp_path, _values())
    opened = open_embedding_group(tmp_path)
    assert opened.data.name.startswith("read-raw-embedding")
    assert opened.dims == ("layer", "word", "dim")
    assert opened.chunks == ((1,) * LAYERS, (384, 384, 232), (DIM,))
    np.testing.assert_array_equal(opened.values, array[:])


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "checksum"),
        (lambda data: data[: 128 * DIM * 4 // 2] + data[-52:], "outside the file"),
        (lambda data: data[:20], "shorter than its shard index"),
    ],
    ids=["index checksum", "truncated chunk", "truncated index"],
)
def test_a_damaged_shard_is_one_clear_error(tmp_path: Path, damage, why: str) -> None:
    array = _store(tmp_path, _values())
    shard = tmp_path / "embedding" / "c" / "1" / "0" / "0"
    shard.write_bytes(damage(shard.read_bytes()))
    with pytest.raises(WordspaceError, match=f"{shard}: damaged embedding block .*{why}"):
        _read(tmp_path, array)
