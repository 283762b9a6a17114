"""Corpus indexing into the store's word table, and the store's bad-input handling."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import xarray as xr
from conftest import SAMPLE_RATE, build_corpus

from wordspace import open_store
from wordspace.cli import main
from wordspace.pipeline.textgrid import Interval, write_textgrid


def run_index(fixture, store: Path, *extra: str) -> int:
    return main(
        [
            "index",
            str(fixture.corpus),
            "--alignments",
            str(fixture.alignments),
            "--store",
            str(store),
            *extra,
        ]
    )


def test_index_counts_tokens_phones_and_genders(small_corpus, tmp_path, capsys):
    store = tmp_path / "store.zarr"
    assert run_index(small_corpus, store) == 0
    output = capsys.readouterr().out
    assert "utterances: 4" in output
    assert "word tokens: 14" in output
    assert "distinct words: 10" in output
    assert "speakers: 2" in output

    words = open_store(store).words
    assert words.sizes["word"] == 14
    texts = list(words.text.values)
    # Repeated words stay separate tokens, in utterance order.
    assert texts.count("the") == 3
    first = words.isel(word=slice(0, 6))
    assert list(first.text.values) == ["the", "cat", "sat", "on", "the", "mat"]
    assert list(first.position.values) == list(range(6))
    assert first.start.values[1] == pytest.approx(0.5)
    assert first.phones.values[1] == "K AE1 T"
    assert set(words.gender.values) == {"F", "M"}
    assert words.gender.values[-1] == "M"
    assert words.utterance.values[-1] == "2002-20-0001"
    assert words.sizes["utt"] == 4
    assert int(words.sample_rate.values[0]) == SAMPLE_RATE
    assert words.duration.values[0] == pytest.approx(0.4 + 6 * 0.3, abs=1e-3)


def test_index_is_lazy_and_idempotent(small_corpus, tmp_path, capsys):
    store = tmp_path / "store.zarr"
    assert run_index(small_corpus, store) == 0
    words = xr.open_zarr(store, consolidated=False)
    assert words.text.chunks is not None  # dask-backed until asked for
    assert run_index(small_corpus, store) == 0
    assert "already indexed" in capsys.readouterr().out


def test_flat_folder_without_transcripts(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    samples = np.zeros(SAMPLE_RATE, dtype=np.float32)
    soundfile.write(flat / "spk1_a.wav", samples, SAMPLE_RATE)
    write_textgrid(
        flat / "spk1_a.TextGrid",
        [Interval(0.1, 0.4, "Hello"), Interval(0.4, 0.5, "sp"), Interval(0.5, 0.8, "hello")],
        [],
        1.0,
    )
    store = tmp_path / "flat.zarr"
    assert main(["index", str(flat), "--store", str(store)]) == 0
    words = open_store(store).words
    assert list(words.text.values) == ["hello", "hello"]
    assert words.speaker.values[0] == "spk1"
    assert words.transcript.values[0] == "hello hello"


def test_skips_are_counted(small_corpus, tmp_path, capsys):
    small_corpus.textgrid("1001-10-0001").unlink()
    grid = small_corpus.textgrid("2002-20-0000")
    grid.write_text(grid.read_text().replace('"dog"', '"log"'))
    store = tmp_path / "store.zarr"
    assert run_index(small_corpus, store) == 0
    output = capsys.readouterr().out
    assert "skipped (no alignment): 1" in output
    assert "skipped (words disagree with transcript): 1" in output
    assert "utterances: 2" in output


def assert_error(capsys, *fragments: str) -> None:
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0, error
    assert error.startswith("wordspace: error:")
    for fragment in fragments:
        assert fragment in error


def test_missing_corpus(tmp_path, capsys):
    store = tmp_path / "s.zarr"
    assert main(["index", str(tmp_path / "nope"), "--store", str(store)]) == 2
    assert_error(capsys, "nope", "does not exist")
    assert not store.exists()


def test_empty_corpus(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    store = tmp_path / "s.zarr"
    assert main(["index", str(tmp_path / "empty"), "--store", str(store)]) == 2
    assert_error(capsys, "no audio files")
    assert not store.exists()


def test_textgrid_that_does_not_parse(small_corpus, tmp_path, capsys):
    small_corpus.textgrid("1001-10-0001").write_text('File type = "ooTextFile"\nbroken')
    store = tmp_path / "s.zarr"
    assert run_index(small_corpus, store) == 2
    assert_error(capsys, "1001-10-0001.TextGrid", "TextGrid")
    assert not store.exists()


def test_strict_mismatch_is_fatal(small_corpus, tmp_path, capsys):
    grid = small_corpus.textgrid("2002-20-0000")
    grid.write_text(grid.read_text().replace('"dog"', '"log"'))
    store = tmp_path / "s.zarr"
    assert run_index(small_corpus, store, "--strict") == 2
    assert_error(capsys, "2002-20-0000", "disagree")
    assert not store.exists()


def test_unreadable_and_empty_audio(small_corpus, tmp_path, capsys):
    audio = small_corpus.corpus / "1001" / "10" / "1001-10-0001.flac"
    audio.write_bytes(b"not audio at all")
    store = tmp_path / "s.zarr"
    assert run_index(small_corpus, store) == 2
    assert_error(capsys, "1001-10-0001.flac", "unreadable audio")
    soundfile.write(audio, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    assert run_index(small_corpus, store) == 2
    assert_error(capsys, "1001-10-0001.flac")
    assert not store.exists()


def test_interval_outside_audio(small_corpus, tmp_path, capsys):
    grid = small_corpus.textgrid("1001-10-0001")
    write_textgrid(
        grid,
        [Interval(0.2, 0.5, "a"), Interval(0.5, 0.8, "dog"), Interval(0.8, 9.0, "ran")],
        [],
        9.0,
    )
    store = tmp_path / "s.zarr"
    assert run_index(small_corpus, store) == 2
    assert_error(capsys, "1001-10-0001.TextGrid", "outside the audio")
    assert not store.exists()


def test_duplicate_utterance_ids(small_corpus, tmp_path, capsys):
    source = small_corpus.corpus / "1001" / "10" / "1001-10-0001.flac"
    copy_folder = small_corpus.corpus / "1001" / "11"
    copy_folder.mkdir()
    shutil.copy(source, copy_folder / source.name)
    store = tmp_path / "s.zarr"
    assert run_index(small_corpus, store) == 2
    assert_error(capsys, "duplicate utterance id", "1001-10-0001")
    assert not store.exists()


def test_store_holding_another_corpus_is_unchanged(small_corpus, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    assert run_index(small_corpus, store) == 0
    before = sorted(path.relative_to(store) for path in store.rglob("*"))
    other = build_corpus(tmp_path / "other", utterances=[("3003", "30", "0000", ["hello"])])
    assert run_index(other, store) == 2
    assert_error(capsys, "different corpus")
    assert sorted(path.relative_to(store) for path in store.rglob("*")) == before
    assert open_store(store).words.sizes["word"] == 14
