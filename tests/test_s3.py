"""A store on S3 (a moto server on loopback): index -> extract on worker processes -> compare ->
lazy queries with xarray and `open_store`."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cluster_model
import dask
import dask.array as da
import fsspec
import numpy as np
import pytest
import xarray as xr

from wordspace import open_store
from wordspace.cluster import dask_client
from wordspace.metrics import similarity_grid
from wordspace.pipeline.compare import compare_models
from wordspace.pipeline.extract import extract_model
from wordspace.pipeline.index import index_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_endpoint():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [Path(sys.executable).parent / "moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint)
                break
            except OSError:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """Credentials and endpoint as users set them: environment variables the workers inherit."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    filesystem = fsspec.filesystem("s3", skip_instance_cache=True)
    bucket = f"bucket-{time.monotonic_ns()}"
    filesystem.mkdir(bucket)
    return filesystem, bucket


def test_extract_compare_and_lazy_queries_on_s3(s3_env, small_corpus):
    filesystem, bucket = s3_env
    url = f"s3://{bucket}/store.zarr"
    index_corpus(small_corpus.corpus, small_corpus.alignments, url)
    with (
        dask.config.set({"distributed.worker.preload": [cluster_model.PATH]}),
        dask_client(workers=2, memory_limit="4GB", quiet=True) as client,
    ):
        for model in ("hashed-words", "other-hashed-words"):
            extract_model(url, model, client=client, block_words=4, progress=False)
        compare_models(url, "hashed-words", "other-hashed-words")
    assert filesystem.exists(f"{bucket}/store.zarr/models/hashed-words/embedding/zarr.json")

    # Lazy access straight from the URL: nothing is read until asked for.
    group = xr.open_zarr(url, group="models/hashed-words", zarr_format=3, consolidated=False)
    words = xr.open_zarr(url, zarr_format=3, consolidated=False)
    embedding = group["embedding"].assign_coords(speaker=words["speaker"], text=words["text"])
    assert isinstance(embedding.data, da.Array)
    mask = (embedding["speaker"] == "2002") & (embedding["text"] == "dog")
    dogs_of_2002 = embedding.sel(layer="l1").isel(word=mask.compute().values)
    assert dogs_of_2002.shape == (1, 16) and isinstance(dogs_of_2002.data, da.Array)

    loaded = embedding.values
    texts, speakers = words["text"].values, words["speaker"].values
    store = open_store(url)
    assert store.models == ["hashed-words", "other-hashed-words"]
    the = store.tokens_of("hashed-words", "THE")
    np.testing.assert_array_equal(the.values, loaded[:, texts == "the"])
    one = store.speaker_layer("hashed-words", "1001", "l2")
    np.testing.assert_array_equal(one.values, loaded[2, speakers == "1001"])
    np.testing.assert_array_equal(dogs_of_2002.values, loaded[1, mask.values])

    other = store.embedding("other-hashed-words").values
    expected = similarity_grid(loaded, other)
    stored = store.comparison("hashed-words", "other-hashed-words")
    for name in ("cka", "cka_debiased", "cca"):
        np.testing.assert_allclose(stored[name].values, expected[name].values, atol=1e-6)


def test_endpoint_from_fsspec_configuration(s3_endpoint, s3_env, small_corpus, monkeypatch):
    """FSSPEC_S3_ENDPOINT_URL (read into fsspec.config.conf at import) works as well."""
    _, bucket = s3_env
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_endpoint})
    url = f"s3://{bucket}/configured.zarr"
    index_corpus(small_corpus.corpus, small_corpus.alignments, url)
    assert open_store(url).words.sizes["word"] == 14
