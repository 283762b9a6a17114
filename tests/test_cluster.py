"""Where the work runs: scheduler discovery, local and GPU clusters, recipes, the cupy backend, and
the commands against a separately started `dask scheduler` with two `dask worker` processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cluster_model
import dask
import dask.array as da
import numpy as np
import pytest
import standin_cupy
from distributed import Client

from wordspace.cli import main
from wordspace.cluster import (
    cluster_recipes,
    dask_client,
    on_backend,
    scheduler_address,
    visible_gpus,
    worker_memory_limit,
)
from wordspace.errors import WordspaceError
from wordspace.metrics import similarity_grid
from wordspace.metrics._backend import array_module
from wordspace.metrics.asif import asif_retrieve
from wordspace.storage import store as st

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_scheduler_address_precedence(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert scheduler_address() is None
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://env:1")
    assert scheduler_address() == "tcp://env:1"
    with dask.config.set({"scheduler-address": "tcp://config:2"}):
        assert scheduler_address() == "tcp://config:2"
        assert scheduler_address("tcp://given:3") == "tcp://given:3"


def test_memory_limit():
    assert worker_memory_limit("4GB", 2) == 4_000_000_000
    assert worker_memory_limit("2GiB", 2) == 2 * 2**30
    assert 0 < worker_memory_limit(None, 2) <= worker_memory_limit(None, 1)
    for bad in ("lots", "0"):
        with pytest.raises(WordspaceError, match="--memory-limit"):
            worker_memory_limit(bad, 2)


def test_unreachable_scheduler_and_missing_file_are_one_line_errors(tmp_path, indexed, capsys):
    with (
        pytest.raises(WordspaceError, match="--scheduler-file .*no such file"),
        dask_client(scheduler_file=str(tmp_path / "none.json")),
    ):
        pass
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "1s"}),
        pytest.raises(WordspaceError, match="cannot reach the Dask scheduler"),
        dask_client(f"tcp://127.0.0.1:{free_port()}"),
    ):
        pass
    assert main(["extract", indexed, "--model", "mfcc", "--memory-limit", "much"]) == 2
    assert "--memory-limit 'much'" in capsys.readouterr().err


def test_gpu_without_gpus_is_refused(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    with pytest.raises(WordspaceError, match="--gpu: no NVIDIA GPU"), dask_client(gpus=[]):
        pass
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]


def test_recipes(capsys):
    text = cluster_recipes()
    for needle in ("SLURMCluster", "KubeCluster", "dask scheduler", "dask worker tcp://host0:8786"):
        assert needle in text
    assert text.count("CUDA_VISIBLE_DEVICES") >= 2
    assert main(["cluster", "slurm"]) == 0
    printed = capsys.readouterr().out
    assert "SLURMCluster" in printed and "KubeCluster" not in printed
    with pytest.raises(WordspaceError, match="choose one of"):
        cluster_recipes("mesos")


def test_cupy_backend_logic_with_a_stand_in(monkeypatch):
    """`on_backend(gpu=True)` makes every block a (stand-in) cupy array, and the metrics' cupy
    paths give the numpy results."""
    cupy = standin_cupy.install(monkeypatch)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 600, 12)).astype(np.float32)
    b = (a[:2, :, :8] @ rng.standard_normal((8, 8)).astype(np.float32)) + 0.1
    lazy_a, lazy_b = da.from_array(a, chunks=(1, 200, -1)), da.from_array(b, chunks=(1, 200, -1))
    gpu_a, gpu_b = on_backend(lazy_a, gpu=True), on_backend(lazy_b, gpu=True)
    assert on_backend(lazy_a, gpu=False) is lazy_a
    assert array_module(gpu_a._meta) is cupy
    with dask.config.set(scheduler="sync"):
        assert array_module(gpu_a.blocks[0, 1].compute()) is cupy
        on_cpu, on_gpu = similarity_grid(lazy_a, lazy_b), similarity_grid(gpu_a, gpu_b)
        for name in on_cpu.data_vars:
            np.testing.assert_allclose(on_gpu[name].values, on_cpu[name].values, atol=1e-5)
        args = (slice(0, 500), slice(500, 600))
        expected = asif_retrieve(a[0, args[0]], b[0, args[0]], a[0, args[1]], b[0, args[1]], k=50)
        found = asif_retrieve(
            gpu_a[0, args[0]], gpu_b[0, args[0]], gpu_a[0, args[1]], gpu_b[0, args[1]], k=50
        )
    np.testing.assert_array_equal(found, expected)


@pytest.mark.slow
def test_gpu_workers_are_pinned_one_per_device():
    with dask_client(gpus=["0", "1"], memory_limit="1GB", quiet=True) as client:
        pinned = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        resources = {
            info["resources"].get("GPU") for info in client.scheduler_info()["workers"].values()
        }
    assert sorted(pinned.values()) == ["0", "1"]
    assert resources == {1}


def _worker_settings() -> tuple[int, str | None]:
    import torch

    return torch.get_num_threads(), os.environ.get("MALLOC_TRIM_THRESHOLD_")


@pytest.mark.parametrize("workers", [1, 2])
def test_local_workers_share_the_cores_with_torch_and_keep_malloc_adaptive(workers):
    from dask.system import CPU_COUNT

    from wordspace.pipeline.extract import share_cores_with_torch

    with dask_client(workers=workers, memory_limit="2GB", quiet=True) as client:
        before = client.run(_worker_settings)
        share_cores_with_torch(client)
        after = client.run(_worker_settings)
        client.restart()  # workers that restart (or join) get the same share
        restarted = client.run(_worker_settings)
    assert {threads for threads, _ in before.values()} == {1}  # Dask's OMP_NUM_THREADS=1
    share = max(1, CPU_COUNT // workers)
    assert {threads for threads, _ in after.values()} == {share}
    assert {threads for threads, _ in restarted.values()} == {share}
    assert {trim for _, trim in after.values()} == {None}


@pytest.fixture
def separate_cluster(tmp_path):
    """`dask scheduler` and two `dask worker` processes on loopback, torn down afterwards."""
    port = free_port()
    scheduler_file = tmp_path / "scheduler.json"
    common = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": tmp_path}
    processes = [
        subprocess.Popen(
            [
                BIN / "dask",
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                ":0",
                "--scheduler-file",
                scheduler_file,
            ],
            **common,
        )  # fmt: skip
    ]
    address = f"tcp://127.0.0.1:{port}"
    for _ in range(2):
        processes.append(
            subprocess.Popen(
                [
                    BIN / "dask",
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--memory-limit",
                    "1GB",
                    "--no-dashboard",
                    "--preload",
                    cluster_model.PATH,
                ],
                **common,
            )  # fmt: skip
        )
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.2)
        with Client(address) as client:
            client.wait_for_workers(2, timeout=60)
        yield address, scheduler_file
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


@pytest.mark.slow
def test_commands_run_on_a_separate_scheduler(
    separate_cluster, small_corpus, tmp_path, monkeypatch
):
    address, scheduler_file = separate_cluster
    url = str(tmp_path / "store.zarr")
    corpus = [str(small_corpus.corpus), "--alignments", str(small_corpus.alignments)]
    assert main(["index", *corpus, "--store", url]) == 0
    assert main(["extract", url, "--model", "hashed-words", "--scheduler", address]) == 0
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    assert main(["extract", url, "--model", "other-hashed-words"]) == 0
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    compare = ["compare", url, "--a", "hashed-words", "--b", "other-hashed-words"]
    assert main([*compare, "--scheduler-file", str(scheduler_file)]) == 0

    with Client(address) as client:
        loaded = client.run(lambda: sorted(__import__("wordspace.pipeline.extract")
                                           .pipeline.extract._LOADED))  # fmt: skip
    specs = {key[0] for keys in loaded.values() for key in keys}
    assert specs == {"hashed-words", "other-hashed-words"}, "the workers did not run the blocks"
    a = st.open_embedding(url, "hashed-words").load()
    b = st.open_embedding(url, "other-hashed-words").load()
    expected = similarity_grid(a.values, b.values)
    stored = st.read_comparison(url, "hashed-words", "other-hashed-words")
    for name in ("cka", "cca"):
        np.testing.assert_allclose(stored[name].values, expected[name].values, atol=1e-6)
