"""CKA / CCA layer grids from a Zarr store through Dask, against the study's per-pair function.

Grid mode (default): two random models of 13 layers x 768 over 46,906 words (the study's size),
float32, written to a Zarr store; times (1) the study's ``linear_CKA`` pair by pair on in-memory
arrays, (2) ``cka_grid`` from the store, (3) ``similarity_grid`` with CKA, debiased CKA and CCA;
prints each time, GFLOP/s as a share of the single-precision matmul peak measured in this run, and
the ratios. Scale mode (``--scale``): a 500,000-word store of 13 x 768 float16 against a 300-d
float32 model on a 2-worker LocalCluster with memory limits; prints time per word from 50,000 to
500,000 words and the workers' peak resident memory. ``--quick`` shrinks both for a smoke test;
``--layers N`` keeps the study's words and width with N x N layers (same per-pair work).
"""

import argparse
import logging
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from wordspace.metrics import cka_grid, similarity_grid


def linear_CKA(X, Y):  # noqa: N802, N803 - the study's function (thesis 3.3.2), verbatim
    X_centered = X - X.mean(axis=0)  # noqa: N806
    Y_centered = Y - Y.mean(axis=0)  # noqa: N806
    hsic = np.linalg.norm(X_centered.T @ Y_centered, "fro") ** 2
    var1 = np.linalg.norm(X_centered.T @ X_centered, "fro")
    var2 = np.linalg.norm(Y_centered.T @ Y_centered, "fro")
    return hsic / (var1 * var2)


def sgemm_peak(repeats: int = 3) -> float:
    """Best GFLOP/s of a float32 (8192 x 4096)ᵀ (8192 x 4096) product on this machine."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8192, 4096), dtype=np.float32)
    b = rng.standard_normal((8192, 4096), dtype=np.float32)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a.T @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 8192 * 4096 * 4096 / best / 1e9


def write_model(path: Path, layers: int, words: int, dim: int, dtype, chunk_words: int, seed):
    """A random (layer, word, dim) `embedding` written chunk by chunk, uncompressed."""
    rng = da.random.default_rng(seed)
    values = rng.standard_normal((layers, words, dim), chunks=(1, chunk_words, dim)).astype(dtype)
    values = values + da.arange(dim, dtype=dtype) / dim  # non-zero column means
    ds = xr.Dataset({"embedding": (("layer", "word", "dim"), values)})
    ds = ds.assign_coords(layer=np.arange(layers))
    encoding = {"embedding": {"compressors": None, "chunks": (1, chunk_words, dim)}}
    ds.to_zarr(path, zarr_format=3, consolidated=False, encoding=encoding)


def open_model(path: Path) -> xr.DataArray:
    return xr.open_zarr(path, consolidated=False)["embedding"]


def study_grid_in_memory(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """The study's function over every layer pair, timed without the store reads."""
    return timed(lambda: np.array([[linear_CKA(x, y) for y in b] for x in a]))


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def grid_benchmark(root: Path, words: int, layers: int, dim: int) -> None:
    print(f"== grid: {layers} x {layers} layers of {dim}, {words:,} words, float32 Zarr store")
    peak = sgemm_peak()
    print(f"sgemm peak measured now: {peak:.0f} GFLOP/s")
    for name, seed in (("a", 1), ("b", 2)):
        write_model(root / name, layers, words, dim, np.float32, 8192, seed)
    a, b = open_model(root / "a"), open_model(root / "b")
    flop = 2 * words * (layers * dim) ** 2  # the cross products alone, as in the issue

    study_grid, t_study = study_grid_in_memory(a.values, b.values)
    ours, t_cka = timed(lambda: cka_grid(a, b))
    every, t_all = timed(lambda: similarity_grid(a, b))
    error = np.max(np.abs(ours - study_grid) / np.abs(study_grid))
    assert np.allclose(every["cka"], ours, rtol=1e-10)

    def rate(seconds: float) -> str:
        gflops = flop / seconds / 1e9
        return f"{gflops:6.0f} GFLOP/s = {gflops / peak:4.0%} of peak"

    print(f"study linear_CKA, pair by pair (in memory): {t_study:7.1f} s  {rate(t_study)}")
    print(f"cka_grid from the store (Dask):             {t_cka:7.1f} s  {rate(t_cka)}")
    print(f"similarity_grid cka+cka_debiased+cca:       {t_all:7.1f} s  {rate(t_all)}")
    print(f"max relative difference cka_grid vs study: {error:.1e}")
    print(f"ratio study / cka_grid:           {t_study / t_cka:5.2f}x  (goal >= 1.9x)")
    print(f"cka_grid share of sgemm peak:     {flop / t_cka / 1e9 / peak:5.0%}  (goal >= 80%)")
    print(f"ratio similarity_grid / cka_grid: {t_all / t_cka:5.2f}x  (goal <= 1.2x)")


def scale_benchmark(root: Path, sizes: list[int], memory_limit: str) -> None:
    from distributed import Client, LocalCluster

    layers, dim, text_dim = 13, 768, 300
    total = max(sizes)
    print(f"== scale: {layers} x {dim} float16 vs 1 x {text_dim} float32, up to {total:,} words")
    write_model(root / "speech", layers, total, dim, np.float16, 8192, 3)
    write_model(root / "text", 1, total, text_dim, np.float32, 8192, 4)
    speech, text = open_model(root / "speech"), open_model(root / "text")
    logging.getLogger("distributed.worker.memory").setLevel(logging.ERROR)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, memory_limit=memory_limit, processes=True
        ) as cluster,
        Client(cluster) as client,
    ):
        print(f"LocalCluster: 2 workers x 1 thread, memory_limit={memory_limit} each")
        per_word = []
        for n in sizes:
            subset = {"word": slice(0, n)}
            ds, seconds = timed(lambda s=subset: similarity_grid(speech.isel(s), text.isel(s)))
            assert ds.attrs["n_words"] == n
            per_word.append(seconds / n)
            print(f"  {n:>9,} words: {seconds:7.1f} s  {seconds / n * 1e6:7.2f} us/word")
        peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        worker_peak = sum(peaks.values()) / 2**20  # ru_maxrss is KiB on Linux
        print(f"time per word, largest / smallest size: {per_word[-1] / per_word[0]:.2f}x")
        print(
            f"peak resident memory of the 2 workers together: {worker_peak:.2f} GiB (goal < 3 GB)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes, for a smoke test")
    parser.add_argument("--scale", action="store_true", help="also run the 500k-word scale mode")
    parser.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the Zarr stores")
    parser.add_argument("--layers", type=int, default=13, help="layers per model in grid mode")
    parser.add_argument("--memory-limit", default="1.4GiB", help="per worker in scale mode")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    root = Path(tempfile.mkdtemp(prefix="bench_cka_cca_", dir=args.dir))
    try:
        dask.config.set(scheduler="threads")
        if args.grid:
            if args.quick:
                grid_benchmark(root / "grid", words=12_000, layers=4, dim=256)
            else:
                grid_benchmark(root / "grid", words=46_906, layers=args.layers, dim=768)
        if args.scale:
            sizes = [10_000, 20_000, 40_000] if args.quick else [50_000, 100_000, 200_000, 500_000]
            scale_benchmark(root / "scale", sizes, args.memory_limit)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
