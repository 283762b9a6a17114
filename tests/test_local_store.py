"""The local store's direct (O_DIRECT) writes of large chunks, and its ordinary fallback."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import zarr

from wordspace.storage import local
from wordspace.storage.local import DirectWriteLocalStore

CHUNK = (1, 1024, 384)  # one layer of one extraction block of a 384-wide model: 1.5 MiB


def supports_o_direct(folder) -> bool:
    probe = folder / "probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644))
    except OSError:
        return False
    probe.unlink()
    return True


@pytest.fixture
def direct_writes(monkeypatch):
    """Records the outcome of every direct write."""
    outcomes = []
    write = local._write_direct

    def recording(path, data):
        outcomes.append((path.name, data.nbytes, write(path, data)))
        return outcomes[-1][2]

    monkeypatch.setattr(local, "_write_direct", recording)
    return outcomes


def embedding_array(folder, **config):
    store = DirectWriteLocalStore(folder / "store.zarr")
    array = zarr.create_array(
        store,
        name="embedding",
        shape=(2, 2048, 384),
        chunks=CHUNK,
        dtype="float32",
        compressors=None,
        fill_value=np.nan,
    )
    return store, array


def test_large_aligned_chunks_are_written_directly_and_read_back(tmp_path, direct_writes):
    if not supports_o_direct(tmp_path):
        pytest.skip(f"{tmp_path} is on a file system without O_DIRECT")
    _, array = embedding_array(tmp_path)
    values = np.random.default_rng(0).standard_normal(array.shape, dtype=np.float32)
    array[:] = values
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "store.zarr/embedding")[:], values)
    # Four chunks of 1.5 MiB went directly; the metadata (small) the ordinary way.
    assert sorted(outcome for _, _, outcome in direct_writes) == [True] * 4
    assert {size for _, size, _ in direct_writes} == {np.prod(CHUNK) * 4}
    assert not list(tmp_path.rglob("*.partial"))


def test_small_or_unaligned_values_are_written_the_ordinary_way(tmp_path, direct_writes):
    store = DirectWriteLocalStore(tmp_path / "store.zarr")
    small = zarr.create_array(store, name="small", shape=(1000,), dtype="float32")
    small[:] = np.arange(1000, dtype=np.float32)
    odd = zarr.create_array(store, name="odd", shape=(300_001,), dtype="float32", compressors=None)
    odd[:] = np.arange(300_001, dtype=np.float32)  # over 1 MiB, not a whole number of 4 KiB
    assert direct_writes == []
    np.testing.assert_array_equal(odd[:], np.arange(300_001, dtype=np.float32))


def test_a_file_system_that_refuses_o_direct_gets_ordinary_writes(tmp_path, monkeypatch):
    refused = []
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & os.O_DIRECT:  # some file systems create the file before refusing
            os.close(real_open(path, flags & ~os.O_DIRECT, *args))
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(local.os, "open", no_direct)
    store, array = embedding_array(tmp_path)
    values = np.random.default_rng(1).standard_normal(array.shape, dtype=np.float32)
    array[:] = values
    np.testing.assert_array_equal(array[:], values)
    assert store._direct is False
    # Once refused, the store stops trying (chunks may race to the first attempt).
    assert 1 <= len(refused) <= 4
    assert not list(tmp_path.rglob("*.partial"))


def test_a_failed_direct_write_leaves_neither_the_chunk_nor_a_partial_file(tmp_path, monkeypatch):
    if not supports_o_direct(tmp_path):
        pytest.skip(f"{tmp_path} is on a file system without O_DIRECT")

    def failing_write(descriptor, data):
        raise OSError(errno.EIO, "Input/output error")

    _, array = embedding_array(tmp_path)
    monkeypatch.setattr(local.os, "write", failing_write)
    with pytest.raises(OSError, match="Input/output error"):
        array[0, :1024] = np.ones((1024, 384), dtype=np.float32)
    monkeypatch.undo()
    assert np.isnan(array[0, :1024]).all()
    assert not list(tmp_path.rglob("*.partial"))
    chunks = tmp_path / "store.zarr/embedding/c"
    assert not [path for path in chunks.rglob("*") if path.is_file()]
