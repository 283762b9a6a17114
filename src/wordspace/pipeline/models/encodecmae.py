"""EncodecMAE (Pepino et al. 2024) through its own package, `encodecmae` (not on PyPI).

The package's `load_model(name, device=...)` builds the model and its feature processor, and
`model.extract_features_from_array(audio, layer="all", chunk_size=...)` returns every layer of
the MAE encoder as (layers, frames, dim). The whole utterance goes in as one chunk: the
package's default cuts audio into independent 4 s chunks, and with mel features (whose frames
drop the incomplete window at each chunk's end) the concatenated frames would drift from any
fixed hop.

Frame geometry is read from the loaded model, never assumed: EnCodec-feature variants use the
EnCodec encoder's hop (`wav_encoder.hop_length`, 320 samples at 24 kHz = 13.33 ms, one frame per
hop); mel variants use the Kaldi frame shift and length of their mel processor, truncated to
whole samples as Kaldi does (13.28 ms and 26.56 ms at 24 kHz: hop 318, window 637 samples).
Before loading, a model is described with the EnCodec-feature geometry.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.base import AudioModelAdapter, FrameGeometry
from wordspace.pipeline.models.devices import torch_device, torch_dtype
from wordspace.pipeline.models.fbank import kaldi_window_samples
from wordspace.pipeline.models.registry import ModelEntry, register, register_path_prefix

SAMPLE_RATE = 24000
ENCODEC_HOP = 320
BASE_LAYERS, BASE_DIM = 10, 768
# extract_features_from_array skips chunks of at most this many samples.
PACKAGE_MIN_SAMPLES = 2048
INSTALL_HINT = (
    "EncodecMAE needs its package, which is not on PyPI: "
    "pip install git+https://github.com/habla-liaa/encodecmae (it needs a torchaudio that "
    "imports beside your torch)"
)


def _package() -> Any:
    try:
        return importlib.import_module("encodecmae")
    except ImportError as error:
        raise WordspaceError(f"{INSTALL_HINT} ({error})") from error
    except OSError as error:  # a torchaudio built for another torch fails to load its library
        raise WordspaceError(
            f"the encodecmae package does not import ({error}); {INSTALL_HINT}"
        ) from error


def geometry_of(model: Any) -> FrameGeometry:
    """The frame geometry of a loaded EncodecMAE model, from its own feature configuration."""
    for processor in getattr(model.processor, "_processors", []):
        mel = getattr(processor, "mel_kwargs", None)
        if mel is not None:
            rate = int(mel["sample_frequency"])
            hop = kaldi_window_samples(rate, float(mel["frame_shift"]))
            window = kaldi_window_samples(rate, float(mel["frame_length"]))
            return FrameGeometry(sample_rate=rate, hop=hop, window=window)
    hop = int(model.wav_encoder.hop_length)
    return FrameGeometry(sample_rate=int(model.wav_encoder.fs), hop=hop, window=hop)


class EncodecMAEAdapter(AudioModelAdapter):
    """Every layer of the EncodecMAE encoder; a word pools the frames it overlaps."""

    def __init__(self, model_name: str, name: str | None = None) -> None:
        _package()
        self.model_name = model_name
        self.name = name or f"encodecmae:{model_name}"
        self.layer_names = [f"layer_{index}" for index in range(1, BASE_LAYERS + 1)]
        self.dim = BASE_DIM
        self.source = f"encodecmae package, load_model({model_name!r}) (Hugging Face cache)"
        self.geometry = FrameGeometry(SAMPLE_RATE, ENCODEC_HOP, ENCODEC_HOP)
        self.model: Any = None

    def load(self, device: str = "cpu", dtype: str = "float32") -> None:
        torch_device(device)
        if dtype != "float32":
            torch_dtype(dtype)
            raise WordspaceError(
                f"dtype {dtype!r}: EncodecMAE's package computes in float32 only; use float32"
            )
        try:
            model = _package().load_model(self.model_name, mode="eval", device=device)
        except WordspaceError:
            raise
        except Exception as error:  # the package raises bare Exceptions for unknown names
            raise WordspaceError(
                f"EncodecMAE {self.model_name!r} did not load ({error}); run once with network "
                "so that encodecmae.load_model can fetch it, or check the name"
            ) from error
        n_layers = len(model.visible_encoder.encoder_layers)
        if n_layers != len(self.layer_names):
            raise WordspaceError(
                f"EncodecMAE {self.model_name!r} has {n_layers} layers, not the base model's "
                f"{len(self.layer_names)}; only base-size models are supported"
            )
        self.geometry = geometry_of(model)
        self.model = model.eval()

    def frames(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        if self.model is None:
            raise WordspaceError(f"model {self.name} is not loaded; call load() first")
        frames = []
        for waveform in waveforms:
            samples = np.asarray(waveform, dtype=np.float32)
            minimum = max(PACKAGE_MIN_SAMPLES + 1, self.geometry.window)
            # An utterance the package would skip is padded with silence.
            samples = np.pad(samples, (0, max(0, minimum - len(samples))))
            layers = self.model.extract_features_from_array(
                samples, chunk_size=len(samples), layer="all"
            )
            frames.append(np.asarray(layers, dtype=np.float32))
        return frames


register_path_prefix("encodecmae", EncodecMAEAdapter)
register(
    ModelEntry(
        name="encodecmae-base",
        summary="EncodecMAE base (EnCodec features), 10 layers of 768, 24 kHz, 75 frames/s",
        build=lambda: EncodecMAEAdapter("base", name="encodecmae-base"),
        install_hint=INSTALL_HINT,
    )
)
