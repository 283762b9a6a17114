"""Kaldi-style log mel filterbank features in torch (the `compute-fbank-feats` defaults).

Kaldi's recipe, per frame: cut `frame_length` ms every `frame_shift` ms (both truncated to whole
samples, frames that do not fit are dropped: "snip edges"), remove the frame's mean, pre-emphasise
(0.97, the first sample against itself), apply the Povey window (Hann to the power 0.85), zero-pad
to a power of two, take the power spectrum, apply triangular filters equally spaced on the mel
scale `1127 ln(1 + f/700)` between `low_freq` and Nyquist, and take the log (floored at float32
epsilon). No dither, no energy term.
"""

from __future__ import annotations

import math

import torch


def kaldi_window_samples(sample_rate: int, milliseconds: float) -> int:
    """A Kaldi frame length or shift in samples: truncated, as Kaldi does."""
    return int(sample_rate * milliseconds * 0.001)


def _mel(frequency: torch.Tensor | float) -> torch.Tensor | float:
    if isinstance(frequency, torch.Tensor):
        return 1127.0 * torch.log1p(frequency / 700.0)
    return 1127.0 * math.log1p(frequency / 700.0)


def mel_filterbank(
    num_mel_bins: int, fft_size: int, sample_rate: int, low_freq: float = 20.0
) -> torch.Tensor:
    """Kaldi's triangular mel filters, (num_mel_bins, fft_size // 2 + 1), float64."""
    nyquist = sample_rate / 2
    fft_bin_width = sample_rate / fft_size
    mel_low, mel_high = _mel(low_freq), _mel(nyquist)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    bins = torch.arange(num_mel_bins, dtype=torch.float64)[:, None]
    left = mel_low + bins * delta
    centre = mel_low + (bins + 1) * delta
    right = mel_low + (bins + 2) * delta
    # Kaldi leaves the Nyquist bin out of every filter.
    fft_mel = _mel(fft_bin_width * torch.arange(fft_size // 2, dtype=torch.float64))[None, :]
    rising = (fft_mel - left) / (centre - left)
    falling = (right - fft_mel) / (right - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return torch.nn.functional.pad(weights, (0, 1))


def kaldi_fbank(
    waveform: torch.Tensor,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    low_freq: float = 20.0,
    preemphasis: float = 0.97,
) -> torch.Tensor:
    """Log mel filterbank energies of a 1-D waveform: (frames, num_mel_bins), float32.

    The waveform is taken as is (Kaldi expects 16-bit sample values, so callers with samples in
    [-1, 1] scale them by 2**15 first). Frames = (N - window) // shift + 1; none when N < window.
    """
    window_size = kaldi_window_samples(sample_rate, frame_length_ms)
    window_shift = kaldi_window_samples(sample_rate, frame_shift_ms)
    fft_size = 1 << (window_size - 1).bit_length()
    signal = waveform.to(torch.float32)
    if signal.shape[0] < window_size:
        return signal.new_zeros((0, num_mel_bins))
    frames = signal.unfold(0, window_size, window_shift)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - preemphasis * previous
    window = torch.hann_window(window_size, periodic=False, dtype=torch.float64).pow(0.85)
    frames = frames * window.to(frames.device, torch.float32)
    frames = torch.nn.functional.pad(frames, (0, fft_size - window_size))
    power = torch.fft.rfft(frames).abs().pow(2)
    filters = mel_filterbank(num_mel_bins, fft_size, sample_rate, low_freq)
    energies = power @ filters.to(power.device, torch.float32).T
    return torch.clamp(energies, min=torch.finfo(torch.float32).eps).log()
