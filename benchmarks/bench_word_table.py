"""Write a synthetic word table of N tokens (default 10 million), reopen it lazily, and report the
time and the peak memory of the process (goal: under 2 GB for 10 million tokens).

    python benchmarks/bench_word_table.py [--words 10000000] [--store /tmp/wordtable.zarr]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from wordspace import open_store
from wordspace.storage import store
from wordspace.storage.word_table import WordTable


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def strings(codes: np.ndarray, values: list[str]) -> pd.Categorical:
    """A string column as the indexer holds it: codes into the distinct values."""
    return pd.Categorical.from_codes(codes, categories=values)


def synthetic_columns(n_words: int, seed: int = 0) -> tuple[dict, dict]:
    """LibriSpeech-like columns: 20 words per utterance, 50,000-word vocabulary, 2,000 speakers."""
    rng = np.random.default_rng(seed)
    vocabulary = [f"word{i}" for i in range(50_000)]
    words_per_utterance = 20
    n_utterances = -(-n_words // words_per_utterance)
    utterance_ids = [f"{u % 2000}-{u // 2000}-{u:04d}" for u in range(n_utterances)]
    speakers = [str(s) for s in range(2000)]
    utterance_index = np.repeat(np.arange(n_utterances, dtype=np.int32), words_per_utterance)[
        :n_words
    ]
    position = np.tile(np.arange(words_per_utterance, dtype=np.int32), n_utterances)[:n_words]
    start = position * 0.3 + 0.1
    utterance_numbers = np.arange(n_utterances)
    word_columns = {
        "text": strings(rng.zipf(1.3, n_words) % len(vocabulary), vocabulary),
        "utterance": strings(utterance_index, utterance_ids),
        "speaker": strings(utterance_index % 2000, speakers),
        "chapter": strings(utterance_index // 2000 % 2000, speakers),
        "gender": strings(utterance_index % 2, ["F", "M"]),
        "position": position,
        "start": start,
        "end": start + 0.3,
        "phones": strings(np.zeros(n_words, dtype=np.int8), ["W ER1 D"]),
        "utterance_index": utterance_index,
    }
    utterance_columns = {
        "utterance_id": strings(utterance_numbers, utterance_ids),
        "audio_path": strings(utterance_numbers, [f"{u}.flac" for u in utterance_ids]),
        "sample_rate": np.full(n_utterances, 16000, dtype=np.int32),
        "duration": np.full(n_utterances, 6.2),
        "transcript": strings(np.zeros(n_utterances, dtype=np.int8), ["word " * 20]),
        "utterance_speaker": strings(utterance_numbers % 2000, speakers),
    }
    return word_columns, utterance_columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--words", type=int, default=10_000_000)
    parser.add_argument("--store", default="/tmp/wordspace-bench-wordtable.zarr")
    args = parser.parse_args()
    shutil.rmtree(args.store, ignore_errors=True)

    began = time.perf_counter()
    words, utterances = synthetic_columns(args.words)
    table = WordTable.from_columns(words, utterances, corpus_root="/corpus")
    built = time.perf_counter()
    store.write_word_table(args.store, table)
    written = time.perf_counter()
    del table, words, utterances
    opened = open_store(args.store).words
    lazy = all(opened[name].chunks is not None for name in opened.coords)
    reopened = time.perf_counter()
    the_count = int((opened["text"] == "word1").sum().compute())
    queried = time.perf_counter()
    size_gb = sum(f.stat().st_size for f in Path(args.store).rglob("*") if f.is_file()) / 1024**3

    print(f"word tokens: {args.words:,}")
    print(f"build columns: {built - began:.1f} s")
    print(
        f"write word table: {written - built:.1f} s ({args.words / (written - built):,.0f} words/s)"
    )
    print(f"reopen lazily: {reopened - written:.2f} s (all coordinates dask-backed: {lazy})")
    print(f"lazy query (count of one word, {the_count:,} tokens): {queried - reopened:.1f} s")
    print(f"store size on disk: {size_gb * 1024:.0f} MB")
    print(f"peak memory of the process: {peak_rss_gb():.2f} GB (goal < 2 GB)")
    shutil.rmtree(args.store, ignore_errors=True)


if __name__ == "__main__":
    main()
