"""Reading audio files as float32 mono at a chosen sample rate."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

from wordspace.errors import WordspaceError

AUDIO_SUFFIXES = (".flac", ".wav", ".ogg")


def audio_info(path: str | Path) -> tuple[int, float]:
    """Sample rate and duration in seconds, read from the header only."""
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        raise WordspaceError(
            f"{path}: unreadable audio ({error}); convert it to FLAC or WAV"
        ) from error
    if info.frames == 0:
        raise WordspaceError(f"{path}: audio file is empty; remove it or replace it")
    return int(info.samplerate), info.frames / info.samplerate


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling (exact rational ratio)."""
    if source_rate == target_rate:
        return samples
    ratio = Fraction(target_rate, source_rate)
    return resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)


def load_audio(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Float32 mono samples in [-1, 1] and their rate, resampled to `sample_rate` when given."""
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        raise WordspaceError(
            f"{path}: unreadable audio ({error}); convert it to FLAC or WAV"
        ) from error
    if samples.shape[0] == 0:
        raise WordspaceError(f"{path}: audio file is empty; remove it or replace it")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if sample_rate is not None and sample_rate != rate:
        return resample(mono, rate, sample_rate), sample_rate
    return np.ascontiguousarray(mono), int(rate)
