"""Scale: a synthetic store of N word tokens, the full CKA/CCA layer row, and ASIF retrieval.

The store holds a 13 x 768 float16 model ("speech") and a 300-d float32 static model ("static"),
written with the storage functions in parallel blocks by the Dask workers. Vectors are built
from a per-word-type base vector (so the two models share structure, as real ones do) plus
layer-dependent noise drawn from a fixed pool (cheap to generate, not compressible).

Everything runs on a local cluster of 2 worker processes with a memory limit per worker (4 GB
by default). Printed: write and comparison time per word at the baseline size (200,000 words)
and at --words, their ratio, peak resident memory of each worker and of this process, and the
extrapolation to LibriSpeech train-960 (9.4 M words). ASIF costs O(queries x anchors), so it is
timed at --asif-words sizes (10% of the words as queries, the rest as anchors) and extrapolated
quadratically; over the whole store it runs with every 10th word a query against a seeded
sample of --asif-anchors anchors, which keeps it linear in the number of queries.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from distributed import Client
from peak_memory import peak_rss_bytes

from wordspace.cluster import dask_client
from wordspace.metrics import similarity_grid
from wordspace.metrics.asif import asif_retrieve
from wordspace.storage import store
from wordspace.storage.word_table import WordTable

TRAIN_960_WORDS = 9_400_000
VOCABULARY = 5_000
WORDS_PER_UTTERANCE = 30
NOISE_POOL = 1 << 16
MODELS = {"speech": (13, 768, "float16"), "static": (1, 300, "float32")}


def synthetic_word_table(n_words: int, seed: int = 0) -> tuple[WordTable, np.ndarray]:
    """A word table of `n_words` tokens (Zipf-distributed words, 30-word utterances), word types."""
    rng = np.random.default_rng(seed)
    vocabulary = [f"w{index}" for index in range(VOCABULARY)]
    types = np.minimum(rng.zipf(1.3, n_words) - 1, VOCABULARY - 1)
    utterance = np.arange(n_words) // WORDS_PER_UTTERANCE
    n_utterances = int(utterance[-1]) + 1
    speakers = [str(index) for index in range(n_utterances // 100 + 1)]
    utterance_ids = [f"u{index}" for index in range(n_utterances)]
    speaker_of_utterance = pd.Categorical.from_codes(np.arange(n_utterances) // 100, speakers)
    position = np.arange(n_words) % WORDS_PER_UTTERANCE

    def constant(value: str, n: int) -> pd.Categorical:
        return pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), [value])

    words = {
        "text": pd.Categorical.from_codes(types, vocabulary),
        "utterance": pd.Categorical.from_codes(utterance, utterance_ids),
        "speaker": pd.Categorical.from_codes(utterance // 100, speakers),
        "chapter": constant("0", n_words),
        "gender": constant("F", n_words),
        "position": position,
        "start": position * 0.3,
        "end": position * 0.3 + 0.3,
        "phones": constant("", n_words),
        "utterance_index": utterance,
    }
    utterances = {
        "utterance_id": utterance_ids,
        "audio_path": constant("none.flac", n_utterances),
        "sample_rate": np.full(n_utterances, 16_000),
        "duration": np.full(n_utterances, WORDS_PER_UTTERANCE * 0.3),
        "transcript": constant("", n_utterances),
        "utterance_speaker": speaker_of_utterance,
    }
    table = WordTable.from_columns(words, utterances, corpus_root="/nonexistent-synthetic-corpus")
    return table, types


@functools.cache
def _tables(dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per word type base vectors, a noise pool and a projection to `dim` (same on every worker)."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((VOCABULARY, 768), dtype=np.float32)
    noise = rng.standard_normal((NOISE_POOL, dim), dtype=np.float32)
    projection = rng.standard_normal((768, dim), dtype=np.float32) / np.sqrt(768)
    return base, noise, projection


def _model_vectors(model: str, types: np.ndarray, start: int) -> np.ndarray:
    """(layers, words, dim) vectors of the words `types` that begin at word `start`."""
    n_layers, dim, dtype = MODELS[model]
    base, noise, projection = _tables(dim)
    if model == "static":
        return (base[types] @ projection)[None]
    out = np.empty((n_layers, len(types), dim), dtype=dtype)
    rows = np.arange(start, start + len(types))
    for layer in range(n_layers):
        pool_rows = (rows * 7919 + layer * 104_729) % NOISE_POOL
        out[layer] = base[types] * (1 - layer / 26) + noise[pool_rows] * (0.3 + layer / 13)
    return out


def _write_block(url: str, model: str, block: int, start: int, types: np.ndarray) -> int:
    store.write_embedding_block(url, model, block, _model_vectors(model, types, start))
    return block


def write_synthetic_store(
    url: str, n_words: int, client: Client, models: dict = MODELS, block_words: int | None = None
) -> None:
    """A store of `n_words` synthetic tokens with every model of `models`, written by `client`."""
    table, types = synthetic_word_table(n_words)
    store.write_word_table(url, table)
    block_words = block_words or store.words_per_block(n_words)
    for model in models:
        n_layers, dim, dtype = MODELS[model]
        store.create_embedding(
            url,
            model,
            layer_names=[f"layer{index}" for index in range(n_layers)],
            n_words=n_words,
            dim=dim,
            dtype=dtype,
            block_words=block_words,
            attrs={"model": f"synthetic {model}"},
        )
        futures = [
            client.submit(
                _write_block, url, model, block, start, types[start:stop], pure=False, retries=2
            )
            for block, (start, stop) in enumerate(store.block_bounds(url, model))
        ]
        client.gather(futures)


def _peak_rss_mb() -> float:
    return peak_rss_bytes() / 2**20


def _run_grid(url: str, memory_limit: str) -> tuple[float, list[float]]:
    """Seconds for the full CKA/CCA row of speech x static, and each worker's peak RSS (MB)."""
    with dask_client(workers=2, memory_limit=memory_limit, quiet=True) as client:
        began = time.perf_counter()
        grid = similarity_grid(
            store.open_embedding(url, "speech"), store.open_embedding(url, "static")
        )
        seconds = time.perf_counter() - began
        assert grid["cka"].shape == (13, 1) and np.isfinite(grid["cca"].values).all()
        peaks = list(client.run(_peak_rss_mb).values())
    return seconds, peaks


def _run_asif(
    url: str, n_words: int, memory_limit: str, max_anchors: int | None = None
) -> tuple[float, list[float]]:
    """Seconds and worker peak RSS (MB) for ASIF over the first `n_words` words: every 10th word
    a query, the others anchors and candidates (a seeded sample of `max_anchors` of them)."""
    speech = store.open_embedding(url, "speech").data[12, :n_words]
    static = store.open_embedding(url, "static").data[0, :n_words]
    queries = np.arange(0, n_words, 10)
    anchors = np.setdiff1d(np.arange(n_words), queries)
    if max_anchors is not None and max_anchors < len(anchors):
        anchors = np.sort(np.random.default_rng(0).choice(anchors, max_anchors, replace=False))
    with dask_client(workers=2, memory_limit=memory_limit, quiet=True) as client:
        began = time.perf_counter()
        retrieved = asif_retrieve(
            speech[anchors], static[anchors], speech[queries], static[anchors], k=250, p=6
        )
        seconds = time.perf_counter() - began
        peaks = list(client.run(_peak_rss_mb).values())
    assert retrieved.shape == (len(queries), 5)
    return seconds, peaks


def measure(root: Path, n_words: int, memory_limit: str) -> dict[str, float]:
    url = str(root / f"store-{n_words}.zarr")
    with dask_client(workers=2, memory_limit=memory_limit, quiet=True) as client:
        began = time.perf_counter()
        write_synthetic_store(url, n_words, client)
        write_seconds = time.perf_counter() - began
    on_disk = sum(path.stat().st_size for path in Path(url).rglob("*") if path.is_file())
    grid_seconds, worker_peaks = _run_grid(url, memory_limit)
    print(
        f"{n_words:>10,} words: store {on_disk / 2**30:6.2f} GiB written in {write_seconds:7.1f} s "
        f"({write_seconds / n_words * 1e6:6.2f} us/word); CKA+dCKA+CCA row 13x1 "
        f"{grid_seconds:7.1f} s ({grid_seconds / n_words * 1e6:6.2f} us/word); worker peak RSS "
        f"{', '.join(f'{peak:,.0f}' for peak in worker_peaks)} MB",
        flush=True,
    )
    return {"url": url, "write": write_seconds, "grid": grid_seconds, "peak": max(worker_peaks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=2_000_000, help="words of the large run")
    parser.add_argument("--baseline-words", type=int, default=200_000)
    parser.add_argument("--asif-words", default="25000,50000", help="sizes of the ASIF runs")
    parser.add_argument("--memory-limit", default="4GB", help="per worker (2 workers)")
    parser.add_argument(
        "--asif-anchors", type=int, default=50_000, help="anchors sampled for the full-size ASIF"
    )
    parser.add_argument("--root", type=Path, default=Path("/work/bench-data"))
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    needed = args.words * (13 * 768 * 2 + 300 * 4) * 1.05
    free = shutil.disk_usage(args.root).free
    if needed > free * 0.8:
        raise SystemExit(f"{args.root}: {needed / 2**30:.0f} GiB needed, {free / 2**30:.0f} free")
    print(f"2 workers x {args.memory_limit}; data under {args.root} (deleted at the end)")
    try:
        base = measure(args.root, args.baseline_words, args.memory_limit)
        large = measure(args.root, args.words, args.memory_limit)
        asif_sizes = [int(size) for size in args.asif_words.split(",")]
        asif_times = []
        for size in asif_sizes:
            seconds, peaks = _run_asif(large["url"], size, args.memory_limit)
            asif_times.append(seconds)
            print(
                f"ASIF k=250 p=6, {size:,} words ({size // 10:,} queries, "
                f"{size - size // 10:,} anchors, 768-d vs 300-d): {seconds:.1f} s, worker peak "
                f"{max(peaks):,.0f} MB",
                flush=True,
            )
        seconds, peaks = _run_asif(large["url"], args.words, args.memory_limit, args.asif_anchors)
        print(
            f"ASIF k=250 p=6 over all {args.words:,} words: {args.words // 10:,} queries against "
            f"{args.asif_anchors:,} sampled anchors (= candidates): {seconds:.1f} s, worker peak "
            f"{max(peaks):,.0f} MB (limit {args.memory_limit})",
            flush=True,
        )
    finally:
        for path in args.root.glob("store-*.zarr"):
            shutil.rmtree(path, ignore_errors=True)
    ratio = (large["grid"] / args.words) / (base["grid"] / args.baseline_words)
    write_ratio = (large["write"] / args.words) / (base["write"] / args.baseline_words)
    print(f"time per word, {args.words:,} vs {args.baseline_words:,}: CKA/CCA row x{ratio:.2f}")
    print(f"  (goal within 1.20), writing x{write_ratio:.2f}")
    print(
        f"peak RSS: worker {large['peak']:,.0f} MB (limit {args.memory_limit}), "
        f"this process {_peak_rss_mb():,.0f} MB"
    )
    per_word = large["grid"] / args.words
    print(
        f"extrapolated CKA/CCA row (13 x 1 layers) for train-960 ({TRAIN_960_WORDS:,} words): "
        f"{per_word * TRAIN_960_WORDS / 60:.0f} min on this machine (2 workers); "
        f"for N workers of this speed about {per_word * TRAIN_960_WORDS * 2 / 60:.0f} / N min"
    )
    n_asif, t_asif = asif_sizes[-1], asif_times[-1]
    scale = (TRAIN_960_WORDS / n_asif) ** 2
    print(
        f"extrapolated ASIF at train-960 (quadratic from {n_asif:,} words): "
        f"{t_asif * scale / 3600:,.0f} h on this machine; at {args.words:,} words "
        f"{t_asif * (args.words / n_asif) ** 2 / 3600:,.1f} h"
    )


if __name__ == "__main__":
    main()
