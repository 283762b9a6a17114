"""Whisper encoders: forward throughput and what the adapter adds around it, in one run.

For each model, on the demo corpus's five LibriVox utterances (real speech, 24.7 s in all, one
30 s window each), measured in the same run:
  * forward: the encoder alone on precomputed log-mel windows (batch of 5), best of --repeats;
  * frames(): the adapter's whole call (windowing, log-mel, forward, cutting padding frames);
  * overhead = frames() / forward − 1.
Audio seconds per second are given per second of real speech and per second of window (30 s per
window, which is what the encoder really processes).

    python benchmarks/bench_whisper.py [--models whisper-tiny.en,whisper-base] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from wordspace.pipeline.audio import load_audio
from wordspace.pipeline.models.registry import build_model
from wordspace.pipeline.models.whisper import (
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    log_mel_spectrogram,
    split_windows,
)

LIBRIVOX = Path(__file__).resolve().parents[1] / "data" / "demo" / "corpus" / "9100" / "1"


def best_seconds(run, repeats: int) -> float:
    """The fastest of `repeats` timed calls (after one warm-up call)."""
    run()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return min(times)


def measure(
    name: str, args: argparse.Namespace, waveforms: list, windows: torch.Tensor
) -> tuple[float, float]:
    """Best seconds of the bare encoder forward and of the adapter's frames(), same inputs."""
    adapter = build_model(name)
    adapter.load(args.device, args.dtype)
    adapter.batch_windows = len(windows)
    encoder = adapter._encoder
    parameter = next(encoder.parameters())
    features = log_mel_spectrogram(windows.to(parameter.device)).to(parameter.dtype)

    def forward() -> None:
        with torch.inference_mode():
            encoder(features, output_hidden_states=True)
        if parameter.device.type == "cuda":
            torch.cuda.synchronize()

    forward_seconds = best_seconds(forward, args.repeats)
    return forward_seconds, best_seconds(lambda: adapter.frames(waveforms), args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="whisper-tiny.en,whisper-base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    waveforms = [load_audio(path, SAMPLE_RATE)[0] for path in sorted(LIBRIVOX.glob("*.flac"))]
    speech_seconds = sum(len(w) for w in waveforms) / SAMPLE_RATE
    windows = torch.cat([split_windows(w)[0] for w in waveforms])
    window_seconds = len(windows) * WINDOW_SAMPLES / SAMPLE_RATE
    print(
        f"{len(waveforms)} utterances, {speech_seconds:.1f} s of speech in {len(windows)} windows"
        f" ({window_seconds:.0f} s); device {args.device}, {args.dtype}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'model':<16} {'forward s':>9} {'frames() s':>10} {'overhead':>8} "
        f"{'speech s/s':>10} {'window s/s':>10}"
    )
    for name in args.models.split(","):
        forward_seconds, frames_seconds = measure(name, args, waveforms, windows)
        print(
            f"{name:<16} {forward_seconds:>9.3f} {frames_seconds:>10.3f} "
            f"{frames_seconds / forward_seconds - 1:>8.1%} "
            f"{speech_seconds / frames_seconds:>10.1f} {window_seconds / frames_seconds:>10.1f}"
        )


if __name__ == "__main__":
    main()
