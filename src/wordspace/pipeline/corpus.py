"""Finding the utterances of a corpus and turning their alignments into the word table.

Layouts read: LibriSpeech (`<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`,
`<speaker>-<chapter>.trans.txt`, `SPEAKERS.TXT` at or above the root) and a flat folder of audio
files; TextGrids mirrored under an alignments folder, flat there, or beside the audio.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wordspace.errors import WordspaceError
from wordspace.pipeline.audio import AUDIO_SUFFIXES, audio_info
from wordspace.pipeline.textgrid import SILENCE_LABELS, TextGrid, read_textgrid
from wordspace.storage.word_table import UTTERANCE_COLUMNS, WORD_COLUMNS, WordTable

LIBRISPEECH_ID = re.compile(r"^(?P<speaker>\d+)-(?P<chapter>\d+)-(?P<utt>\d+)$")
# MFA's interval ends are rounded; an interval this far past the audio's end is still accepted.
END_TOLERANCE_SECONDS = 0.05
_PUNCTUATION = re.compile(r"[^\w'\s-]")


@dataclass(frozen=True)
class Utterance:
    """One audio file of the corpus, with its transcript when the corpus has one."""

    id: str
    speaker: str
    chapter: str
    audio_path: Path
    transcript: str | None


@dataclass
class IndexSummary:
    """What `index_corpus` read and what it skipped, by reason."""

    utterances: int = 0
    word_tokens: int = 0
    distinct_words: int = 0
    speakers: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, utterance_id: str) -> None:
        self.skipped[reason] += 1
        self.skipped_examples.setdefault(reason, [])
        if len(self.skipped_examples[reason]) < 5:
            self.skipped_examples[reason].append(utterance_id)

    def lines(self) -> list[str]:
        lines = [
            f"utterances: {self.utterances}",
            f"word tokens: {self.word_tokens}",
            f"distinct words: {self.distinct_words}",
            f"speakers: {self.speakers}",
        ]
        for reason, count in sorted(self.skipped.items()):
            examples = ", ".join(self.skipped_examples[reason])
            lines.append(f"skipped ({reason}): {count}  e.g. {examples}")
        return lines


def normalise_words(text: str) -> list[str]:
    """Lower-case words of a transcript, punctuation other than apostrophes and hyphens removed."""
    return _PUNCTUATION.sub(" ", text.lower()).split()


def read_transcripts(corpus_root: Path) -> dict[str, str]:
    """Every `*.trans.txt` line under the root, as utterance id -> transcript."""
    transcripts: dict[str, str] = {}
    for path in sorted(corpus_root.rglob("*.trans.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            utterance_id, _, text = line.strip().partition(" ")
            if utterance_id:
                transcripts[utterance_id] = text.strip()
    return transcripts


def read_speakers(corpus_root: Path) -> dict[str, str]:
    """Speaker id -> gender ('F'/'M') from the first SPEAKERS.TXT at or above the root."""
    for folder in [corpus_root, *corpus_root.resolve().parents][:4]:
        path = folder / "SPEAKERS.TXT"
        if path.is_file():
            genders: dict[str, str] = {}
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith(";") or "|" not in line:
                    continue
                fields = [part.strip() for part in line.split("|")]
                genders[fields[0]] = fields[1].upper()
            return genders
    return {}


def _speaker_and_chapter(stem: str) -> tuple[str, str]:
    match = LIBRISPEECH_ID.match(stem)
    if match:
        return match["speaker"], match["chapter"]
    prefix = re.split(r"[-_]", stem, maxsplit=1)[0]
    return (prefix if prefix != stem else "unknown"), ""


def find_utterances(corpus_root: Path) -> list[Utterance]:
    """The corpus's audio files as utterances, sorted by id; duplicate ids are an error."""
    corpus_root = Path(corpus_root)
    if not corpus_root.is_dir():
        raise WordspaceError(f"{corpus_root}: corpus folder does not exist; check the path")
    transcripts = read_transcripts(corpus_root)
    found: dict[str, Path] = {}
    for path in sorted(corpus_root.rglob("*")):
        if path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file():
            continue
        if path.stem in found:
            raise WordspaceError(
                f"{path}: duplicate utterance id {path.stem!r} (also {found[path.stem]}); "
                "rename one of them or index the folders separately"
            )
        found[path.stem] = path
    if not found:
        raise WordspaceError(
            f"{corpus_root}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found; "
            "point to the folder that holds the corpus"
        )
    utterances = []
    for utterance_id in sorted(found):
        speaker, chapter = _speaker_and_chapter(utterance_id)
        utterances.append(
            Utterance(
                utterance_id, speaker, chapter, found[utterance_id], transcripts.get(utterance_id)
            )
        )
    return utterances


def find_textgrids(alignments_root: Path) -> dict[str, Path]:
    """Utterance id -> TextGrid path, for a mirrored or flat folder of TextGrids."""
    alignments_root = Path(alignments_root)
    if not alignments_root.is_dir():
        raise WordspaceError(
            f"{alignments_root}: alignments folder does not exist; check --alignments"
        )
    textgrids: dict[str, Path] = {}
    for path in sorted(alignments_root.rglob("*")):
        if path.suffix.lower() != ".textgrid":
            continue
        if path.stem in textgrids:
            raise WordspaceError(
                f"{path}: a second TextGrid for utterance {path.stem!r} "
                f"(also {textgrids[path.stem]}); keep one"
            )
        textgrids[path.stem] = path
    return textgrids


def _words_of(grid: TextGrid, path: Path) -> list[tuple[str, float, float, str]]:
    """(word, start, end, phones) for each word interval of the grid."""
    try:
        word_tier = grid.tier("words", "word")
    except KeyError as error:
        raise WordspaceError(
            f"{path}: {error.args[0]}; MFA TextGrids have a 'words' tier"
        ) from None
    try:
        phone_tier = grid.tier("phones", "phone")
    except KeyError:
        phone_tier = []
    phone_starts = np.array([phone.start for phone in phone_tier])
    words = []
    for interval in word_tier:
        label = interval.label.strip().lower()
        if label in SILENCE_LABELS:
            continue
        first = int(np.searchsorted(phone_starts, interval.start - 1e-6))
        phones = []
        for phone in phone_tier[first:]:
            if phone.start >= interval.end - 1e-6:
                break
            if phone.label.strip().lower() not in SILENCE_LABELS:
                phones.append(phone.label.strip())
        words.append((label, interval.start, interval.end, " ".join(phones)))
    return words


def build_word_table(
    corpus_root: Path, alignments_root: Path | None, *, strict: bool = False
) -> tuple[WordTable, IndexSummary]:
    """Read the corpus and its alignments into the word table (dims `word` and `utt`)."""
    corpus_root = Path(corpus_root)
    utterances = find_utterances(corpus_root)
    textgrids = find_textgrids(alignments_root if alignments_root is not None else corpus_root)
    genders = read_speakers(corpus_root)
    summary = IndexSummary()
    word_rows: dict[str, list] = {name: [] for name in WORD_COLUMNS}
    utterance_rows: dict[str, list] = {name: [] for name in UTTERANCE_COLUMNS}
    for utterance in utterances:
        textgrid_path = textgrids.get(utterance.id)
        if textgrid_path is None:
            summary.skip("no alignment", utterance.id)
            continue
        words = _words_of(read_textgrid(textgrid_path), textgrid_path)
        if utterance.transcript is not None:
            expected = normalise_words(utterance.transcript)
            aligned = [word for word, *_ in words]
            if aligned != expected:
                message = (
                    f"{textgrid_path}: words disagree with the transcript of {utterance.id} "
                    f"({len(aligned)} aligned, {len(expected)} in the transcript)"
                )
                if strict:
                    raise WordspaceError(message + "; re-align it or drop --strict to skip it")
                summary.skip("words disagree with transcript", utterance.id)
                continue
        sample_rate, duration = audio_info(utterance.audio_path)
        for word, start, end, _ in words:
            if start < 0 or end > duration + END_TOLERANCE_SECONDS or end < start:
                raise WordspaceError(
                    f"{textgrid_path}: word {word!r} at {start:.3f}-{end:.3f} s lies outside the "
                    f"audio ({duration:.3f} s, {utterance.audio_path}); the TextGrid belongs to "
                    "other audio"
                )
        utterance_index = len(utterance_rows["utterance_id"])
        gender = genders.get(utterance.speaker, "")
        for position, (word, start, end, phones) in enumerate(words):
            row = (
                word,
                utterance.id,
                utterance.speaker,
                utterance.chapter,
                gender,
                position,
                start,
                min(end, duration),
                phones,
                utterance_index,
            )
            for name, value in zip(WORD_COLUMNS, row, strict=True):
                word_rows[name].append(value)
        transcript = utterance.transcript or " ".join(word for word, *_ in words)
        relative = utterance.audio_path.resolve().relative_to(corpus_root.resolve())
        utterance_row = (
            utterance.id,
            relative.as_posix(),
            sample_rate,
            duration,
            transcript,
            utterance.speaker,
        )
        for name, value in zip(UTTERANCE_COLUMNS, utterance_row, strict=True):
            utterance_rows[name].append(value)
    table = WordTable.from_columns(
        word_rows, utterance_rows, corpus_root=str(corpus_root.resolve())
    )
    summary.utterances = table.n_utterances
    summary.word_tokens = table.n_words
    summary.distinct_words = len(table.words["text"].categories)
    summary.speakers = len(table.words["speaker"].categories)
    if summary.word_tokens == 0:
        raise WordspaceError(
            f"{corpus_root}: no aligned words found "
            f"({'; '.join(summary.lines()[4:]) or 'no skips'}); "
            "check that --alignments points to the TextGrids of this corpus"
        )
    return table, summary
