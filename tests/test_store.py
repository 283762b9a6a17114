"""Model groups: region writes per block, completion marks, resume, provenance, lazy opening."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from wordspace import open_store
from wordspace.errors import WordspaceError
from wordspace.storage import store as st


def make_group(url, block_words=4, dtype="float32"):
    st.create_embedding(
        url,
        "toy",
        layer_names=["l0", "l1", "l2"],
        n_words=14,
        dim=5,
        dtype=dtype,
        block_words=block_words,
        attrs={"model_id": "toy", "pooling": "mean"},
    )


def block_values(url, block):
    start, stop = st.block_bounds(url, "toy")[block]
    values = np.arange(3 * (stop - start) * 5, dtype=np.float32).reshape(3, stop - start, 5)
    return values + 1000 * block


def test_region_writes_and_resume(indexed):
    make_group(indexed)
    assert st.block_bounds(indexed, "toy") == [(0, 4), (4, 8), (8, 12), (12, 14)]
    assert st.incomplete_blocks(indexed, "toy") == [0, 1, 2, 3]
    for block in (0, 2):
        st.write_embedding_block(indexed, "toy", block, block_values(indexed, block))
    # A second writer (a resumed run) sees only what is left, and creating again is a no-op.
    make_group(indexed)
    assert st.incomplete_blocks(indexed, "toy") == [1, 3]
    partial = open_store(indexed).embedding("toy").values
    assert np.isnan(partial[:, 4:8]).all() and not np.isnan(partial[:, 0:4]).any()
    for block in st.incomplete_blocks(indexed, "toy"):
        st.write_embedding_block(indexed, "toy", block, block_values(indexed, block))
    assert st.incomplete_blocks(indexed, "toy") == []
    expected = np.concatenate([block_values(indexed, b) for b in range(4)], axis=1)
    embedding = open_store(indexed).embedding("toy")
    assert embedding.dims == ("layer", "word", "dim")
    assert list(embedding.layer.values) == ["l0", "l1", "l2"]
    assert embedding.attrs["model_id"] == "toy"
    assert embedding.chunks is not None
    np.testing.assert_array_equal(embedding.values, expected)
    assert list(embedding.text.values[:3]) == ["the", "cat", "sat"]


def test_a_group_whose_creation_was_interrupted_is_created_again(indexed):
    make_group(indexed)
    group = zarr.open_group(st.zarr_store(indexed), path="models/toy", mode="r+")
    del group["block_complete"]  # as if interrupted before its last step (the attributes)
    group.attrs.clear()
    assert st.create_embedding(
        indexed, "toy", layer_names=["l0", "l1", "l2"], n_words=14, dim=5, dtype="float32",
        block_words=4, attrs={"model_id": "toy"},
    )  # fmt: skip
    assert st.incomplete_blocks(indexed, "toy") == [0, 1, 2, 3]
    assert st.model_attrs(indexed, "toy")["block_words"] == 4


def test_creating_a_model_group_needs_a_store_and_leaves_none_behind(tmp_path):
    with pytest.raises(WordspaceError, match="no word table here"):
        st.create_embedding(
            tmp_path / "missing.zarr", "toy", layer_names=["l0"], n_words=3, dim=2,
            dtype="float32", block_words=4, attrs={},
        )  # fmt: skip
    assert not (tmp_path / "missing.zarr").exists()


def test_mismatched_group_is_refused(indexed):
    make_group(indexed)
    with pytest.raises(WordspaceError, match="another shape"):
        make_group(indexed, dtype="float16")


def test_lazy_helpers(indexed):
    make_group(indexed, block_words=14)
    st.write_embedding_block(indexed, "toy", 0, block_values(indexed, 0))
    opened = open_store(indexed)
    assert opened.models == ["toy"]
    the = opened.tokens_of("toy", "THE")
    assert the.sizes["word"] == 3 and the.chunks is not None
    one = opened.speaker_layer("toy", "2002", "l1")
    assert one.sizes["word"] == 5 and set(one.speaker.values) == {"2002"}


def test_missing_model_and_store(indexed, tmp_path):
    with pytest.raises(WordspaceError, match="no model 'nope'"):
        open_store(indexed).embedding("nope")
    with pytest.raises(WordspaceError, match="no word table"):
        open_store(tmp_path / "absent.zarr")
