"""A worker killed mid-extraction or mid-comparison costs a retry, not the run; two extractions
into one store at once do not corrupt each other."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cluster_model
import dask
import numpy as np
import pytest
from conftest import PHONES, build_corpus
from distributed import Client

from wordspace.cluster import dask_client
from wordspace.errors import WordspaceError
from wordspace.pipeline.compare import compare_models
from wordspace.pipeline.extract import ExtractSettings, extract_model, plan_blocks
from wordspace.pipeline.index import index_corpus
from wordspace.storage import store as st

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from bench_scale import synthetic_word_table  # noqa: E402

pytestmark = pytest.mark.slow
VOCABULARY = sorted(PHONES)


def many_utterances(n: int) -> list[tuple[str, str, str, list[str]]]:
    rng = np.random.default_rng(1)
    return [
        ("1001", "10", f"{index:04d}", list(rng.choice(VOCABULARY, size=rng.integers(3, 8))))
        for index in range(n)
    ]


@pytest.fixture
def indexed(tmp_path):
    corpus = build_corpus(tmp_path, many_utterances(40))
    url = str(tmp_path / "store.zarr")
    index_corpus(corpus.corpus, corpus.alignments, url)
    return url


@pytest.fixture
def two_workers(monkeypatch):
    monkeypatch.setenv("WORDSPACE_TEST_MODEL_SECONDS", "0.2")
    with (
        dask.config.set({"distributed.worker.preload": [cluster_model.PATH]}),
        dask_client(workers=2, memory_limit="1GB", quiet=True) as client,
    ):
        yield client


def kill_a_worker_when(client: Client, ready, killed: list[int]) -> threading.Thread:
    """A thread that SIGKILLs one worker process (its nanny restarts it) once `ready()`."""

    def run() -> None:
        deadline = time.monotonic() + 120
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = next(iter(client.run(os.getpid).values()))
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_worker_killed_mid_extraction(indexed, two_workers):
    client = two_workers
    options = {"client": client, "block_words": 8, "progress": False}
    extract_model(indexed, "hashed-words", name="calm", **options)
    n_blocks = len(st.block_bounds(indexed, "calm"))

    def some_blocks_done() -> bool:
        try:
            done = n_blocks - len(st.incomplete_blocks(indexed, "killed"))
        except (KeyError, FileNotFoundError):  # the group is still being created
            return False
        return 2 <= done < n_blocks - 2

    killed: list[int] = []
    killer = kill_a_worker_when(client, some_blocks_done, killed)
    summary = extract_model(indexed, "hashed-words", name="killed", **options)
    killer.join()
    assert killed and killed[0] not in client.run(os.getpid).values()
    assert summary.blocks_done == n_blocks and not st.incomplete_blocks(indexed, "killed")
    np.testing.assert_array_equal(
        st.open_embedding(indexed, "killed").values, st.open_embedding(indexed, "calm").values
    )


def test_a_block_that_cannot_be_written_fails_the_run_and_a_rerun_finishes_it(indexed, two_workers):
    options = {"client": two_workers, "block_words": 8, "progress": False}
    extract_model(indexed, "hashed-words", name="clean", **options)
    settings = ExtractSettings(name="blocked", block_words=8)
    plan_blocks(indexed, "hashed-words", settings)  # creates the group, as a run would
    # A directory where block 1's chunk of layer 0 goes: its write fails however often it runs.
    obstacle = Path(indexed) / "models/blocked/embedding/c/0/1/0"
    (obstacle / "in-the-way").mkdir(parents=True)
    with pytest.raises(WordspaceError, match=r"1 block\(s\) not written after 3 attempts "
                       r"\(models/blocked block 1: IsADirectoryError"):  # fmt: skip
        extract_model(indexed, "hashed-words", name="blocked", **options)
    assert st.incomplete_blocks(indexed, "blocked") == [1]
    shutil.rmtree(obstacle)
    summary = extract_model(indexed, "hashed-words", name="blocked", **options)
    assert summary.blocks_done == 1
    np.testing.assert_array_equal(
        st.open_embedding(indexed, "blocked").values, st.open_embedding(indexed, "clean").values
    )


def write_random_model(url: str, model: str, n_layers: int, dim: int, seed: int) -> None:
    n_words = st.root_attrs(url)["n_words"]
    block_words = st.words_per_block(n_words)
    names = [f"{model}{index}" for index in range(n_layers)]
    st.create_embedding(url, model, layer_names=names, n_words=n_words, dim=dim,
                        dtype="float32", block_words=block_words, attrs={})  # fmt: skip
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((n_layers, 64, dim)).astype(np.float32)
    for block, (start, stop) in enumerate(st.block_bounds(url, model)):
        shared = np.random.default_rng(start).standard_normal((stop - start, 64))
        values = shared.astype(np.float32) @ mixing + rng.standard_normal((stop - start, dim))
        st.write_embedding_block(url, model, block, values.astype(np.float32))


def test_worker_killed_mid_comparison(tmp_path, two_workers):
    client = two_workers
    url = str(tmp_path / "large.zarr")
    st.write_word_table(url, synthetic_word_table(150_000)[0])
    write_random_model(url, "left", 3, 192, seed=1)
    write_random_model(url, "right", 2, 256, seed=2)
    calm = compare_models(url, "left", "right")

    def statistics_running() -> bool:
        return any(client.processing().values())

    killed: list[int] = []
    killer = kill_a_worker_when(client, statistics_running, killed)
    disturbed = compare_models(url, "left", "right")
    killer.join()
    assert killed and killed[0] not in client.run(os.getpid).values()
    for name in ("cka", "cka_debiased", "cca"):
        np.testing.assert_allclose(disturbed[name].values, calm[name].values, rtol=1e-6)


WRITER = """
import sys
sys.path.insert(0, {tests!r})
import cluster_model
from distributed import Client
from wordspace.pipeline.extract import extract_model
with Client(processes=False, n_workers=1, threads_per_worker=2) as client:
    extract_model({url!r}, sys.argv[1], client=client, block_words=4, progress=False)
"""


def test_concurrent_extractions_into_one_store(indexed, monkeypatch):
    monkeypatch.setenv("WORDSPACE_TEST_MODEL_SECONDS", "0.05")
    script = WRITER.format(tests=str(Path(__file__).parent), url=indexed)
    models = ("hashed-words", "other-hashed-words")
    writers = [subprocess.Popen([sys.executable, "-c", script, model]) for model in models]
    assert [writer.wait(timeout=300) for writer in writers] == [0, 0]

    monkeypatch.setenv("WORDSPACE_TEST_MODEL_SECONDS", "0")
    with Client(processes=False, n_workers=1, threads_per_worker=2) as client:
        for model in models:
            extract_model(indexed, model, name=f"{model}-alone", client=client, block_words=4,
                          progress=False)  # fmt: skip
    for model in models:
        assert not st.incomplete_blocks(indexed, model)
        np.testing.assert_array_equal(
            st.open_embedding(indexed, model).values,
            st.open_embedding(indexed, f"{model}-alone").values,
        )
