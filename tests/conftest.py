"""Shared fixtures: a small LibriSpeech-format corpus built by the tests themselves."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
from distributed import Client, LocalCluster

from wordspace.pipeline.index import index_corpus
from wordspace.pipeline.textgrid import Interval, write_textgrid

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SAMPLE_RATE = 16_000
# (speaker, chapter, utterance, words); "the" repeats within and across utterances.
UTTERANCES = [
    ("1001", "10", "0000", ["the", "cat", "sat", "on", "the", "mat"]),
    ("1001", "10", "0001", ["a", "dog", "ran"]),
    ("2002", "20", "0000", ["the", "dog", "sat"]),
    ("2002", "20", "0001", ["hello", "world"]),
]
PHONES = {
    "the": ["DH", "AH0"],
    "cat": ["K", "AE1", "T"],
    "sat": ["S", "AE1", "T"],
    "on": ["AA1", "N"],
    "mat": ["M", "AE1", "T"],
    "a": ["AH0"],
    "dog": ["D", "AO1", "G"],
    "ran": ["R", "AE1", "N"],
    "hello": ["HH", "AH0", "L", "OW1"],
    "world": ["W", "ER1", "L", "D"],
}
WORD_SECONDS = 0.3
LEAD_SECONDS = 0.2


@dataclass
class CorpusFixture:
    corpus: Path
    alignments: Path
    utterances: list[tuple[str, str, str, list[str]]]

    def textgrid(self, utterance_id: str) -> Path:
        speaker, chapter, _ = utterance_id.split("-")
        return self.alignments / speaker / chapter / f"{utterance_id}.TextGrid"


def word_intervals(words: list[str]) -> tuple[list[Interval], list[Interval]]:
    """Words back to back after a lead-in silence, each phone an equal share of its word."""
    word_tier, phone_tier = [], []
    for position, word in enumerate(words):
        start = LEAD_SECONDS + position * WORD_SECONDS
        end = start + WORD_SECONDS
        word_tier.append(Interval(start, end, word))
        phones = PHONES[word]
        step = WORD_SECONDS / len(phones)
        phone_tier += [
            Interval(start + i * step, start + (i + 1) * step, phone)
            for i, phone in enumerate(phones)
        ]
    return word_tier, phone_tier


def build_corpus(root: Path, utterances=UTTERANCES) -> CorpusFixture:
    corpus, alignments = root / "corpus", root / "alignments"
    rng = np.random.default_rng(0)
    transcripts: dict[tuple[str, str], list[str]] = {}
    for speaker, chapter, utt, words in utterances:
        utterance_id = f"{speaker}-{chapter}-{utt}"
        folder = corpus / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        duration = LEAD_SECONDS * 2 + WORD_SECONDS * len(words)
        samples = 0.1 * rng.standard_normal(int(duration * SAMPLE_RATE)).astype(np.float32)
        soundfile.write(folder / f"{utterance_id}.flac", samples, SAMPLE_RATE)
        transcripts.setdefault((speaker, chapter), []).append(
            f"{utterance_id} {' '.join(words).upper()}"
        )
        word_tier, phone_tier = word_intervals(words)
        grid_folder = alignments / speaker / chapter
        grid_folder.mkdir(parents=True, exist_ok=True)
        write_textgrid(grid_folder / f"{utterance_id}.TextGrid", word_tier, phone_tier, duration)
    for (speaker, chapter), lines in transcripts.items():
        (corpus / speaker / chapter / f"{speaker}-{chapter}.trans.txt").write_text(
            "\n".join(lines) + "\n"
        )
    (corpus / "SPEAKERS.TXT").write_text(
        "; ID |SEX| SUBSET | MINUTES | NAME\n"
        "1001 | F | dev-clean | 1.0 | Ada\n"
        "2002 | M | dev-clean | 1.0 | Bob\n"
    )
    return CorpusFixture(corpus, alignments, list(utterances))


@pytest.fixture
def small_corpus(tmp_path: Path) -> CorpusFixture:
    return build_corpus(tmp_path)


@pytest.fixture
def indexed(small_corpus: CorpusFixture, tmp_path: Path) -> str:
    """A store holding the small corpus's word table."""
    url = str(tmp_path / "store.zarr")
    index_corpus(small_corpus.corpus, small_corpus.alignments, url)
    return url


@pytest.fixture(scope="module")
def client():
    """An in-process Dask cluster, so models registered by a test are known to its workers."""
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as client,
    ):
        yield client
