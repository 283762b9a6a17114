"""Acoustic baselines with no weights: log mel filterbank and MFCC frames, pooled like any model.

Both follow Kaldi's `compute-fbank-feats` / `compute-mfcc-feats` at 16 kHz: 25 ms windows every
10 ms, snipped edges (frame ``i`` reads samples ``[160·i, 160·i + 400)``), so their geometry is
hop 160, window 400, offset 0. Log-mel: 80 mel bins. MFCC: 13 cepstra from 23 mel bins (DCT-II,
orthonormal, cepstral lifter 22), c0 kept as the zeroth cepstrum rather than replaced by the log
energy; `mfcc-deltas` appends first and second differences (Kaldi's `add-deltas`, window 2) for
39 dimensions. A signal shorter than one window is zero-padded to one frame.
"""

from __future__ import annotations

import numpy as np
import torch

from wordspace.pipeline.models.base import AudioModelAdapter, FrameGeometry
from wordspace.pipeline.models.devices import torch_device
from wordspace.pipeline.models.fbank import kaldi_fbank
from wordspace.pipeline.models.registry import ModelEntry, register

SAMPLE_RATE = 16000
GEOMETRY = FrameGeometry(sample_rate=SAMPLE_RATE, hop=160, window=400, offset=0.0)
INT16_SCALE = 2.0**15  # Kaldi's features expect 16-bit sample values
MFCC_MEL_BINS = 23
MFCC_CEPSTRA = 13
CEPSTRAL_LIFTER = 22.0
DELTA_WINDOW = 2


def dct_matrix(n_inputs: int, n_outputs: int) -> torch.Tensor:
    """Orthonormal DCT-II, first `n_outputs` rows: (n_outputs, n_inputs), float64."""
    k = torch.arange(n_outputs, dtype=torch.float64)[:, None]
    n = torch.arange(n_inputs, dtype=torch.float64)[None, :]
    matrix = torch.cos(torch.pi / n_inputs * (n + 0.5) * k) * (2.0 / n_inputs) ** 0.5
    matrix[0] /= 2.0**0.5
    return matrix


def deltas(features: torch.Tensor, window: int = DELTA_WINDOW) -> torch.Tensor:
    """Regression differences over ±`window` frames (edges repeated): (frames, dim)."""
    padded = torch.cat(
        [features[:1].expand(window, -1), features, features[-1:].expand(window, -1)]
    )
    n_frames = features.shape[0]
    total = torch.zeros_like(features)
    for n in range(1, window + 1):
        ahead = padded[window + n : window + n + n_frames]
        behind = padded[window - n : window - n + n_frames]
        total += n * (ahead - behind)
    return total / (2 * sum(n * n for n in range(1, window + 1)))


class FilterbankFeatures(AudioModelAdapter):
    """Log mel filterbank (`cepstra=None`) or MFCC frames, computed on the chosen device."""

    geometry = GEOMETRY

    def __init__(self, name: str, mel_bins: int, cepstra: int | None, with_deltas: bool) -> None:
        self.name = name
        self.mel_bins = mel_bins
        self.cepstra = cepstra
        self.with_deltas = with_deltas
        base_dim = cepstra if cepstra is not None else mel_bins
        self.dim = base_dim * (3 if with_deltas else 1)
        self.layer_names = [name]
        kind = f"{cepstra} MFCC from {mel_bins} mel bins" if cepstra else f"{mel_bins} log mel bins"
        self.source = f"none, computed: Kaldi-style {kind}, 25 ms / 10 ms at 16 kHz"
        self._device = torch.device("cpu")

    def load(self, device: str = "cpu", dtype: str = "float32") -> None:
        self._device = torch_device(device)
        if self.cepstra is not None:
            lifter = 1 + CEPSTRAL_LIFTER / 2 * torch.sin(
                torch.pi * torch.arange(self.cepstra, dtype=torch.float64) / CEPSTRAL_LIFTER
            )
            transform = dct_matrix(self.mel_bins, self.cepstra) * lifter[:, None]
            self._cepstral = transform.T.to(self._device, torch.float32)

    def frames(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        results = []
        with torch.inference_mode():
            for waveform in waveforms:
                signal = torch.as_tensor(waveform, dtype=torch.float32, device=self._device)
                if signal.shape[0] < GEOMETRY.window:
                    signal = torch.nn.functional.pad(signal, (0, GEOMETRY.window - len(signal)))
                features = kaldi_fbank(
                    signal * INT16_SCALE, sample_rate=SAMPLE_RATE, num_mel_bins=self.mel_bins
                )
                if self.cepstra is not None:
                    features = features @ self._cepstral
                if self.with_deltas:
                    first = deltas(features)
                    features = torch.cat([features, first, deltas(first)], dim=1)
                results.append(features.cpu().numpy()[None])
        return results


register(
    ModelEntry(
        name="logmel",
        summary="log mel filterbank, 80 bins, 25 ms / 10 ms (Kaldi fbank); no weights",
        build=lambda: FilterbankFeatures("logmel", mel_bins=80, cepstra=None, with_deltas=False),
    )
)
register(
    ModelEntry(
        name="mfcc",
        summary="13 MFCC (Kaldi style, 23 mel bins, lifter 22), 25 ms / 10 ms; no weights",
        build=lambda: FilterbankFeatures(
            "mfcc", mel_bins=MFCC_MEL_BINS, cepstra=MFCC_CEPSTRA, with_deltas=False
        ),
    )
)
register(
    ModelEntry(
        name="mfcc-deltas",
        summary="13 MFCC with first and second differences (39 dims); no weights",
        build=lambda: FilterbankFeatures(
            "mfcc-deltas", mel_bins=MFCC_MEL_BINS, cepstra=MFCC_CEPSTRA, with_deltas=True
        ),
    )
)
