"""ASIF at the study's size: dense reference vs streamed retrieval, sweep and 13 x 13 layer grid.

Each case runs in its own subprocess. Memory: "baseline" is the resident memory after the
inputs were made (the inputs are the caller's: 39,871 x 768 x 2 + 7,035 x 768 float32 = 270 MB,
plus the interpreter and libraries), "peak" the highest resident memory of the process while the
case ran (the kernel's high-water mark, reset just before the call), "extra" peak minus baseline.
Inputs are synthetic: Y is a rotation of X plus noise, so retrieval is meaningful. The 169
independent retrievals of the grid are estimated from 3 timed ones (x 169 / 3), whose indices are
checked against the grid's. ``--quick`` shrinks all sizes by 8 and the grid to 4 x 4.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse
from peak_memory import peak_rss_bytes, reset_peak_rss

from wordspace.metrics.asif import STUDY_GRID, asif_grid, asif_retrieve, asif_sweep

N_ANCHORS, N_QUERIES, DIM, LAYERS = 39_871, 7_035, 768, 13
K_RETRIEVE, P_RETRIEVE = 800, 8
GRID_CELL = (250, 4)


SINGLE_PAIRS = ((0, 1), (-1, 2), (2, -1))
"""The grid's (layer_a, layer_b) pairs retrieved independently for the 169-retrieval estimate."""


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _spaces(n_anchors: int, n_queries: int, dim: int, layers: int, seed: int = 0):
    """Labels and (layers, tokens, dim) X and Y = X rotated + noise; anchors, then queries."""
    rng = np.random.default_rng(seed)
    n = n_anchors + n_queries
    labels = rng.integers(0, n // 8, n)  # about 8 tokens per word
    base = rng.standard_normal((n // 8, dim), dtype=np.float32)[labels]
    base += 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    x = np.empty((layers, n, dim), np.float32)
    y = np.empty((layers, n, dim), np.float32)
    for layer in range(layers):
        x[layer] = base + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
        y[layer] = base @ rotation + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
    return labels, x, y


def dense_reference(ax, ay, qx, cy, k, p, top):
    """Whole similarity matrices in memory, each row fully sorted as the official ASIF code."""

    def unit(m):
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    def relative(rows, anchors):
        sims = unit(rows) @ unit(anchors).T  # the whole (rows x anchors) matrix
        cols = np.empty((len(sims), k), np.int64)
        for start in range(0, len(sims), 4096):  # argsort in slices: int64 indices of all is 2x
            cols[start : start + 4096] = np.argsort(-sims[start : start + 4096], axis=1)[:, :k]
        vals = np.maximum(np.take_along_axis(sims, cols, axis=1), 0) ** p
        del sims
        vals /= np.linalg.norm(vals, axis=1, keepdims=True)
        indptr = np.arange(0, vals.size + 1, k)
        shape = (len(rows), len(anchors))
        return scipy.sparse.csr_matrix((vals.ravel(), cols.ravel(), indptr), shape=shape)

    rq, rc = relative(qx, ax), relative(cy, ay)
    out = np.empty((len(qx), top), np.int64)
    for start in range(0, len(qx), 512):
        scores = (rq[start : start + 512] @ rc.T).toarray()
        out[start : start + 512] = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    return out


def run_case(case: str, scale: int, layers: int, save: Path) -> dict:
    n_a, n_q = N_ANCHORS // scale, N_QUERIES // scale
    labels, x, y = _spaces(n_a, n_q, DIM, layers if case in ("grid", "single") else 1)
    ax, qx, ay = x[0, :n_a], x[0, n_a:], y[0, :n_a]
    before = _rss_mb()
    reset_peak_rss()
    start = time.perf_counter()
    if case == "dense":
        out = dense_reference(ax, ay, qx, ay, K_RETRIEVE, P_RETRIEVE, 5)
    elif case == "retrieve":
        out = asif_retrieve(ax, ay, qx, ay, k=K_RETRIEVE, p=P_RETRIEVE)
    elif case == "sweep":
        out = asif_sweep(ax, ay, qx, ay, only=STUDY_GRID)["retrieved"].values
    elif case == "grid":
        anchors, queries = np.arange(n_a), np.arange(n_a, n_a + n_q)
        ds = asif_grid(x, y, anchors=anchors, queries=queries, candidates=anchors,
                       ks=(GRID_CELL[0],), ps=(GRID_CELL[1],))  # fmt: skip
        out = ds["retrieved"].values[:, :, 0, 0]
        np.save(save, out[tuple(np.array(SINGLE_PAIRS).T)])
    else:  # single: independent retrievals of some of the grid's layer pairs
        out = [asif_retrieve(x[i, :n_a], y[j, :n_a], x[i, n_a:], y[j, :n_a], k=GRID_CELL[0],
                             p=GRID_CELL[1]) for i, j in SINGLE_PAIRS]  # fmt: skip
        out = np.stack(out)
        np.save(save, out)
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes() / 2**20
    retrieved = np.asarray(out)[..., 0]
    computed = retrieved >= 0  # -1 marks the sweep's cells outside the study's grid
    hits = labels[retrieved] == np.broadcast_to(labels[n_a:], retrieved.shape)
    return {"seconds": seconds, "baseline_mb": before, "peak_mb": peak,
            "extra_mb": peak - before, "top1": float(hits[computed].mean())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes / 8, 4 x 4 grid")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    scale, layers = (8, 4) if args.quick else (1, LAYERS)
    if args.case:
        print(json.dumps(run_case(args.case, scale, layers, args.save)))
        return
    print(f"anchors = candidates {N_ANCHORS // scale}, queries {N_QUERIES // scale}, dim {DIM}, "
          f"grid {layers} x {layers}; shared machine, timings are noisy")  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in ("dense", "retrieve", "sweep", "single", "grid"):
            cmd = [sys.executable, __file__, "--case", case, "--save", f"{tmp}/{case}.npy"]
            done = subprocess.run(cmd + (["--quick"] if args.quick else []), capture_output=True,
                                  text=True, check=True)  # fmt: skip
            results[case] = r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{case:9s} {r['seconds']:8.1f} s  baseline {r['baseline_mb']:6.0f} MB  peak "
                  f"{r['peak_mb']:6.0f} MB (+{r['extra_mb']:.0f} MB)  top-1 {r['top1']:.3f}",
                  flush=True)  # fmt: skip
        same = np.array_equal(np.load(f"{tmp}/single.npy"), np.load(f"{tmp}/grid.npy"))
    pairs = layers * layers
    timed = len(SINGLE_PAIRS)
    independent = results["single"]["seconds"] / timed * pairs
    print(
        f"dense reference / asif_retrieve (k={K_RETRIEVE}, p={P_RETRIEVE}): "
        f"{results['dense']['seconds'] / results['retrieve']['seconds']:.2f}x (goal > 1)"
    )
    print(
        f"asif_sweep ({len(STUDY_GRID)} cells) / asif_retrieve: "
        f"{results['sweep']['seconds'] / results['retrieve']['seconds']:.2f}x (goal <= 2)"
    )
    print(
        f"{pairs} independent retrievals (estimated: {timed} timed, x {pairs}/{timed}) = "
        f"{independent:.0f} s; grid (k, p) = {GRID_CELL} {results['grid']['seconds']:.0f} s: "
        f"{independent / results['grid']['seconds']:.1f}x faster (goal >= 5); "
        f"grid indices identical to the {timed} independent retrievals: {same}"
    )
    r = results["retrieve"]
    print(
        f"asif_retrieve peak resident memory {r['peak_mb']:.0f} MB in all, of which "
        f"{r['baseline_mb']:.0f} MB baseline (interpreter, libraries, inputs) and "
        f"+{r['extra_mb']:.0f} MB during the call (goal < 1536 MB, met by the total: "
        f"{r['peak_mb'] < 1536})"
    )


if __name__ == "__main__":
    main()
