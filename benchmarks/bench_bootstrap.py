"""Group-bootstrap bands of a layer curve: resampled statistics against recomputation.

Data shaped like the demo's largest layer-curve pair (whisper-base, 7 layers x 512, against one
768-d layer of mpnet-base; 7,141 words in 478 utterances), float32, random with a shared signal.
Times (1) the former way, `similarity_grid` (CKA, debiased CKA, CCA) on the resampled rows of every
bootstrap draw, and (2) `resampled_statistics`: each utterance's statistics once, combined for
every draw; prints both times, the ratio, the largest difference between the two (they compute the
same numbers), and the load average.
"""

import argparse
import os
import time

import dask
import numpy as np

from wordspace.metrics import similarity_grid
from wordspace.metrics.grid import grids_from_statistics
from wordspace.metrics.resample import resampled_statistics

METRICS = ["cka", "cka_debiased", "cca"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-boot", type=int, default=50)
    parser.add_argument("--words", type=int, default=7141)
    parser.add_argument("--groups", type=int, default=478)
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--dim-a", type=int, default=512)
    parser.add_argument("--dim-b", type=int, default=768)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((args.words, 64))
    a = np.stack(
        [signal @ rng.standard_normal((64, args.dim_a)) + 3 * rng.standard_normal(
            (args.words, args.dim_a)) for _ in range(args.layers)]
    ).astype(np.float32)  # fmt: skip
    b = (signal @ rng.standard_normal((64, args.dim_b))).astype(np.float32)[None]
    b += rng.standard_normal(b.shape).astype(np.float32)
    groups = np.sort(rng.integers(0, args.groups, args.words))
    labels, inverse = np.unique(groups, return_inverse=True)
    draws = [rng.integers(0, len(labels), len(labels)) for _ in range(args.n_boot)]
    weights = np.array([np.bincount(d, minlength=len(labels)) for d in draws])
    members = [np.flatnonzero(inverse == g) for g in range(len(labels))]
    print(
        f"{args.layers} x {args.words} x {args.dim_a} against {args.dim_b}, {len(labels)} groups, "
        f"{args.n_boot} resamples; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    began = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        before = []
        for draw in draws:
            rows = np.concatenate([members[g] for g in draw])
            grid = similarity_grid(a[:, rows], b[:, rows], metrics=METRICS, ridge=1e-3)
            before.append({m: grid[m].values for m in METRICS})
    recompute = time.perf_counter() - began
    print(f"recompute per resample: {recompute:.1f} s; load {os.getloadavg()[0]:.2f}", flush=True)

    began = time.perf_counter()
    stats = resampled_statistics(a, b, groups, weights, debiased=True)
    after = [grids_from_statistics(s, METRICS, ridge=1e-3) for s in stats]
    grouped = time.perf_counter() - began
    print(f"resampled statistics: {grouped:.1f} s; load {os.getloadavg()[0]:.2f}")
    pairs = zip(before, after, strict=True)
    difference = max(float(np.nanmax(np.abs(x[m] - y[m]))) for x, y in pairs for m in METRICS)
    print(f"speed-up {recompute / grouped:.1f}x; largest difference {difference:.2e}")


if __name__ == "__main__":
    main()
