"""Word-boundary error of `wordspace align` against the synthesizers' exact times.

Aligns the synthesized speakers of the demo corpus (SUBSET `demo-synth` in SPEAKERS.TXT) with
pocketsphinx and compares every word's start and end with the committed synthesizer TextGrids.

    .venv/bin/python benchmarks/bench_alignment.py [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from wordspace.pipeline.align import align_corpus
from wordspace.pipeline.textgrid import read_textgrid

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


def synthetic_speakers(corpus: Path) -> list[str]:
    """Speaker ids whose SPEAKERS.TXT subset is demo-synth."""
    speakers = []
    for line in (corpus / "SPEAKERS.TXT").read_text().splitlines():
        fields = [field.strip() for field in line.split("|")]
        if not line.startswith(";") and len(fields) > 2 and fields[2] == "demo-synth":
            speakers.append(fields[0])
    return speakers


def spoken_words(path: Path) -> list:
    return [interval for interval in read_textgrid(path).tier("words") if interval.label]


def boundary_errors(aligned: Path, truth: Path) -> dict[str, list[float]]:
    """Speaker -> absolute start and end errors (seconds) of each of its words."""
    errors: dict[str, list[float]] = {}
    for predicted_path in sorted(aligned.rglob("*.TextGrid")):
        relative = predicted_path.relative_to(aligned)
        predicted, expected = spoken_words(predicted_path), spoken_words(truth / relative)
        if [w.label for w in predicted] != [w.label for w in expected]:
            raise RuntimeError(f"{relative}: aligned words differ from the synthesizer's")
        for a, b in zip(predicted, expected, strict=True):
            errors.setdefault(relative.parts[0], []).extend(
                [abs(a.start - b.start), abs(a.end - b.end)]
            )
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    corpus = DEMO / "corpus"
    with tempfile.TemporaryDirectory() as scratch:
        subset = Path(scratch) / "corpus"
        for speaker in synthetic_speakers(corpus):
            shutil.copytree(corpus / speaker, subset / speaker)
        started = time.perf_counter()
        summary = align_corpus(subset, Path(scratch) / "aligned", workers=args.workers)
        seconds = time.perf_counter() - started
        by_speaker = boundary_errors(Path(scratch) / "aligned", DEMO / "alignments")
    for line in summary.lines():
        print(line)
    for speaker, speaker_errors in sorted(by_speaker.items()):
        print(
            f"speaker {speaker}: median {np.median(speaker_errors) * 1000:.1f} ms, "
            f"95th percentile {np.percentile(speaker_errors, 95) * 1000:.1f} ms"
        )
    errors = np.concatenate([np.array(values) for values in by_speaker.values()])
    milliseconds = errors * 1000
    print(f"aligned in {seconds:.1f} s with {args.workers} worker(s)")
    print(f"word boundaries compared: {len(errors)}")
    print(f"median boundary error: {np.median(milliseconds):.1f} ms")
    print(f"95th percentile boundary error: {np.percentile(milliseconds, 95):.1f} ms")
    print(f"within 50 ms: {np.mean(milliseconds <= 50) * 100:.1f} %")


if __name__ == "__main__":
    main()
