"""GPU check: the metrics on cupy against numpy, `compare --gpu` and `extract --gpu` end to end.

Run on a machine with an NVIDIA GPU and cupy. At the study's size (n = 46,906 words, 13 x 768
layers against 13 x 768; ASIF with 39,871 anchors and 7,035 queries) it computes `cka_grid`,
`cca_grid` and `asif_retrieve` on numpy and on cupy, from in-memory arrays and from dask arrays
chunked along the words as the store gives them, prints the largest difference and each time.
Then the command line: `wordspace compare --gpu` against the CPU on a synthetic store, and
`wordspace extract --gpu` of a randomly initialised wav2vec 2.0 on the demo corpus against the
CPU. Each part prints PASS or FAIL and the run exits non-zero if any part failed.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cupy
import dask
import dask.array as da
import numpy as np
import xarray as xr

from wordspace.cluster.backend import on_backend
from wordspace.metrics import asif_retrieve, cca_grid, cka_grid
from wordspace.storage import store

GRID_TOLERANCE = 1e-5
FAILED: list[str] = []
DEMO_SPEAKERS = ("9004", "9100")
"""The demo speakers extracted on both devices: a synthetic voice and the LibriVox reader."""


def timed(fn: Callable, *args: object, **kwargs: object) -> tuple[object, float]:
    """`fn(*args)` and its wall time, the GPU synchronised before the clock stops."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    cupy.cuda.Device().synchronize()
    return out, time.perf_counter() - start


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def layered_pair(n: int, layers: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two related (layers, n, dim) float32 stacks: B's layers are noisy rotations of A's."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n, dim), dtype=np.float32)
    a = np.stack(
        [
            shared + (0.2 + layer / layers) * rng.standard_normal((n, dim), np.float32)
            for layer in range(layers)
        ]
    )
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    b = np.stack(
        [
            shared @ rotation + (1.2 - layer / layers) * rng.standard_normal((n, dim), np.float32)
            for layer in range(layers)
        ]
    )
    return a, b


def metric_grids(n: int, layers: int, dim: int, chunk: int) -> None:
    a, b = layered_pair(n, layers, dim, seed=0)
    gpu_a, gpu_b = cupy.asarray(a), cupy.asarray(b)
    lazy_a = da.from_array(a, chunks=(1, chunk, -1))
    lazy_b = da.from_array(b, chunks=(1, chunk, -1))
    lazy_gpu_a, lazy_gpu_b = on_backend(lazy_a, gpu=True), on_backend(lazy_b, gpu=True)
    for name, fn in (("cka_grid", cka_grid), ("cca_grid", cca_grid)):
        expected, cpu_time = timed(fn, a, b)
        lazy_expected, lazy_cpu_time = timed(fn, lazy_a, lazy_b)
        timed(fn, gpu_a[:, :2048], gpu_b[:, :2048])  # warm-up: cuBLAS handles, kernels
        found, gpu_time = timed(fn, gpu_a, gpu_b)
        lazy_found, lazy_gpu_time = timed(fn, lazy_gpu_a, lazy_gpu_b)
        gap = max(np.abs(found - expected).max(), np.abs(lazy_found - lazy_expected).max())
        check(
            f"{name} {layers}x{layers} layers of {dim}, n={n}",
            bool(gap <= GRID_TOLERANCE),
            f"max |cupy - numpy| {gap:.2e}; numpy {cpu_time:.2f} s, cupy {gpu_time:.2f} s "
            f"({cpu_time / gpu_time:.1f}x); dask numpy {lazy_cpu_time:.2f} s, dask cupy "
            f"{lazy_gpu_time:.2f} s ({lazy_cpu_time / lazy_gpu_time:.1f}x)",
        )


def retrieval(n_anchors: int, n_queries: int, dim: int, k: int, p: float) -> None:
    a, b = layered_pair(n_anchors + n_queries, 1, dim, seed=1)
    x, y = a[0], b[0]
    args = (x[:n_anchors], y[:n_anchors], x[n_anchors:], y[:n_anchors])
    asif_retrieve(*(v[:2000] for v in args), k=k, p=p)  # compiles the numba kernels
    expected, cpu_time = timed(asif_retrieve, *args, k=k, p=p)
    gpu_args = [cupy.asarray(v) for v in args]
    # The first call compiles the kernels that this machine's cupy cache lacks (a smaller
    # warm-up does not reach all of them), so the first and the second call are timed apart.
    profiler = cProfile.Profile()  # in this thread: one GPU needs no scheduler threads
    with dask.config.set(scheduler="synchronous"):
        _, first_time = profiler.runcall(timed, asif_retrieve, *gpu_args, k=k, p=p)
        found, gpu_time = timed(asif_retrieve, *gpu_args, k=k, p=p)
    first_call = pstats.Stats(profiler)
    first_call.sort_stats("tottime").print_stats(8)
    compiling = sum(
        total
        for (_, _, name), (_, _, total, _, _) in first_call.stats.items()
        if "compileProgram" in name
    )
    same_rows = float((found == expected).all(axis=1).mean())
    same_top1 = float((found[:, 0] == expected[:, 0]).mean())
    check(
        f"asif_retrieve {n_anchors} anchors, {n_queries} queries, dim {dim}, k={k}, p={p}",
        same_top1 == 1.0 and same_rows >= 0.999,
        f"identical top-1 {same_top1:.4%}, identical top-5 rows {same_rows:.4%}; numpy "
        f"{cpu_time:.2f} s, cupy {gpu_time:.2f} s ({cpu_time / gpu_time:.1f}x; first call "
        f"{first_time:.2f} s, {compiling:.2f} s of it compiling kernels)",
    )


def wordspace(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "wordspace", *args], check=True)
    return time.perf_counter() - start


def compare_command(root: Path, n_words: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_scale import write_synthetic_store

    from wordspace.cluster import dask_client

    cpu_url, gpu_url = root / "cpu.zarr", root / "gpu.zarr"
    with dask_client(workers=4, quiet=True) as client:
        write_synthetic_store(str(cpu_url), n_words, client)
    shutil.copytree(cpu_url, gpu_url)
    common = ["--a", "speech", "--b", "static", "--metrics", "cka,cka_debiased,cca"]
    cpu_time = wordspace("compare", str(cpu_url), *common)
    gpu_time = wordspace("compare", str(gpu_url), *common, "--gpu")
    on_cpu = store.read_comparison(cpu_url, "speech", "static")
    on_gpu = store.read_comparison(gpu_url, "speech", "static")
    gap = max(float(np.abs(on_gpu[v] - on_cpu[v]).max()) for v in ("cka", "cka_debiased", "cca"))
    check(
        f"wordspace compare --gpu, {n_words} words, 13x768 float16 vs 300-d",
        gap <= GRID_TOLERANCE,
        f"max |gpu - cpu| {gap:.2e}; cpu {cpu_time:.1f} s, gpu {gpu_time:.1f} s (whole command)",
    )


def extract_command(root: Path, demo: Path) -> None:
    import torch
    import transformers

    folder = root / "wav2vec2-random"
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        num_hidden_layers=4,
        hidden_size=256,
        intermediate_size=512,
        num_attention_heads=4,
        conv_dim=(128,) * 7,
    )
    transformers.Wav2Vec2Model(config).save_pretrained(folder)
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu_url, gpu_url = root / "demo-cpu.zarr", root / "demo-gpu.zarr"
    subset = root / "demo-subset"
    for speaker in DEMO_SPEAKERS:
        for part in ("corpus", "alignments"):
            shutil.copytree(demo / part / speaker, subset / part / speaker)
    shutil.copy(demo / "corpus" / "SPEAKERS.TXT", subset / "corpus" / "SPEAKERS.TXT")
    wordspace(
        "index",
        str(subset / "corpus"),
        "--alignments",
        str(subset / "alignments"),
        "--store",
        str(cpu_url),
    )
    shutil.copytree(cpu_url, gpu_url)
    model = f"hf:{folder}"
    cpu_time = wordspace("extract", str(cpu_url), "--model", model, "--name", "w2v")
    gpu_time = wordspace("extract", str(gpu_url), "--model", model, "--name", "w2v", "--gpu")
    on_cpu = xr.open_zarr(cpu_url, group="models/w2v")
    on_gpu = xr.open_zarr(gpu_url, group="models/w2v")
    name = "embedding"
    reference = on_cpu[name].values
    gap = float(np.nanmax(np.abs(on_gpu[name].values - reference)) / np.nanmax(np.abs(reference)))
    check(
        f"wordspace extract --gpu, random wav2vec 2.0 (4 x 256), demo speakers {DEMO_SPEAKERS}",
        gap <= 1e-3,
        f"max |gpu - cpu| / max |cpu| {gap:.2e} (cuDNN convolutions may use TF32); "
        f"cpu {cpu_time:.1f} s, gpu {gpu_time:.1f} s (whole command)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/wordspace-gpu"))
    parser.add_argument("--demo", type=Path, default=Path("data/demo"))
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the sizes for a dry run")
    parser.add_argument("--parts", default="grids,asif,compare,extract", help="which checks")
    args = parser.parse_args()
    props = cupy.cuda.runtime.getDeviceProperties(0)
    print(
        f"device: {props['name'].decode()}, cupy {cupy.__version__}, numpy {np.__version__}, "
        f"dask {dask.__version__}",
        flush=True,
    )
    shutil.rmtree(args.root, ignore_errors=True)
    args.root.mkdir(parents=True)
    size = lambda n: max(300, int(n * args.scale))  # noqa: E731
    parts = {
        "grids": lambda: metric_grids(size(46_906), 13, 768, chunk=4096),
        "asif": lambda: retrieval(size(39_871), size(7_035), 768, k=250, p=6),
        "compare": lambda: compare_command(args.root, size(100_000)),
        "extract": lambda: extract_command(args.root, args.demo),
    }
    for name in args.parts.split(","):
        try:
            parts[name]()
        except Exception as error:  # report and go on: one device run checks every part
            check(name, False, f"{type(error).__name__}: {error}")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
