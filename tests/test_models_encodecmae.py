"""EncodecMAE adapter against a stand-in of the `encodecmae` package's interface.

The stand-in mirrors the real package where the adapter touches it: `load_model(name, mode,
device)`, `model.processor._processors` (a mel processor carries Kaldi `mel_kwargs`),
`model.wav_encoder.hop_length` / `.fs`, `model.visible_encoder.encoder_layers`, and
`extract_features_from_array(audio, chunk_size, layer="all")`, which cuts audio into chunks of
`chunk_size` (default 4 s), skips chunks of at most 2048 samples, and concatenates the frames.
Its frames encode their own index (value = 1000 · layer + frame), so a word's frames are known.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.base import Utterance
from wordspace.pipeline.models.encodecmae import EncodecMAEAdapter
from wordspace.pipeline.models.registry import build_model

DIM = 768


class StandInModel:
    def __init__(self, mel: bool, n_layers: int = 10) -> None:
        self.wav_encoder = types.SimpleNamespace(hop_length=320, fs=24000)
        processors: list[object] = [types.SimpleNamespace(max_length=4)]
        if mel:
            kwargs = {"frame_shift": 13.28, "frame_length": 26.56, "sample_frequency": 24000}
            processors.append(types.SimpleNamespace(mel_kwargs=kwargs))
        self.processor = types.SimpleNamespace(_processors=processors)
        self.visible_encoder = types.SimpleNamespace(encoder_layers=[None] * n_layers)
        self.mel = mel
        self.n_layers = n_layers
        self.evaluated = False

    def eval(self) -> StandInModel:
        self.evaluated = True
        return self

    def _n_frames(self, n_samples: int) -> int:
        if self.mel:  # Kaldi frames, snip edges: hop int(318.72), window int(637.44)
            return (n_samples - 637) // 318 + 1
        return -(-n_samples // 320)

    def extract_features_from_array(
        self, audio: np.ndarray, chunk_size: int | None = None, layer: object = -1
    ) -> np.ndarray:
        chunk_size = chunk_size or 4 * 24000
        counts = [
            self._n_frames(len(audio[start : start + chunk_size]))
            for start in range(0, len(audio), chunk_size)
            if len(audio[start : start + chunk_size]) > 2048
        ]
        index = np.arange(sum(counts), dtype=np.float32)
        layers = 1000.0 * np.arange(self.n_layers, dtype=np.float32)[:, None] + index[None, :]
        features = np.repeat(layers[:, :, None], DIM, axis=2)
        return features if layer == "all" else features[layer]


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("encodecmae")
    module.loaded = []

    def load_model(model: str, mode: str = "eval", device: str = "cuda:0") -> StandInModel:
        if model not in ("base", "mel-base", "large"):
            raise Exception(f"Available models are: ['base', 'mel-base', 'large'], not {model}")
        module.loaded.append((model, mode, device))
        return StandInModel(mel=model.startswith("mel"), n_layers=20 if model == "large" else 10)

    module.load_model = load_model
    monkeypatch.setitem(sys.modules, "encodecmae", module)
    return module


def test_without_the_package_one_line_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "encodecmae", None)
    with pytest.raises(
        WordspaceError, match="pip install git\\+https://github.com/habla-liaa"
    ) as error:
        build_model("encodecmae-base")
    assert "\n" not in str(error.value)


def test_description_and_loading(stand_in: types.ModuleType) -> None:
    adapter = build_model("encodecmae-base")
    assert len(adapter.layer_names) == 10 and adapter.dim == 768
    assert adapter.geometry.sample_rate == 24000
    adapter.load("cpu")
    assert stand_in.loaded == [("base", "eval", "cpu")]
    assert adapter.model.evaluated
    assert (adapter.geometry.hop, adapter.geometry.window) == (320, 320)


def test_mel_geometry_is_read_from_the_model(stand_in: types.ModuleType) -> None:
    adapter = EncodecMAEAdapter("mel-base")
    adapter.load("cpu")
    assert (adapter.geometry.sample_rate, adapter.geometry.hop, adapter.geometry.window) == (
        24000,
        318,
        637,
    )


@pytest.mark.parametrize("model_name", ["base", "mel-base"])
def test_frames_cover_the_whole_utterance_in_one_piece(
    stand_in: types.ModuleType, model_name: str
) -> None:
    adapter = EncodecMAEAdapter(model_name)
    adapter.load("cpu")
    n_samples = 10 * 24000 + 123  # longer than the package's 4 s chunks
    frames = adapter.frames([np.zeros(n_samples, dtype=np.float32)])[0]
    geometry = adapter.geometry
    expected = (
        (n_samples - geometry.window) // geometry.hop + 1
        if model_name.startswith("mel")
        else -(-n_samples // geometry.hop)
    )
    assert frames.shape == (10, expected, DIM)
    np.testing.assert_array_equal(frames[3, :, 0], 3000 + np.arange(expected))


def test_word_pools_the_frames_known_by_construction(stand_in: types.ModuleType) -> None:
    adapter = EncodecMAEAdapter("base")
    adapter.load("cpu")
    # Frame i's cell is [320 i, 320 i + 320) samples: a word from 1.001 s to 1.199 s (samples
    # 24024 to 28776) overlaps frames 75..89; frame values are their index (plus 1000 · layer).
    utterance = Utterance(
        "u", ["word"], np.array([1.001]), np.array([1.199]), "word", np.zeros(48000, np.float32)
    )
    vectors = adapter.embed([utterance])[0]
    np.testing.assert_allclose(vectors[:, 0, 0], 1000 * np.arange(10) + np.mean(np.arange(75, 90)))


def test_short_utterance_is_padded_to_what_the_package_reads(stand_in: types.ModuleType) -> None:
    adapter = EncodecMAEAdapter("base")
    adapter.load("cpu")
    assert adapter.frames([np.zeros(500, dtype=np.float32)])[0].shape == (10, 7, DIM)


def test_load_errors_are_one_line(stand_in: types.ModuleType) -> None:
    with pytest.raises(WordspaceError, match="did not load"):
        EncodecMAEAdapter("unknown").load("cpu")
    with pytest.raises(WordspaceError, match="has 20 layers"):
        EncodecMAEAdapter("large").load("cpu")
    with pytest.raises(WordspaceError, match="float32 only"):
        EncodecMAEAdapter("base").load("cpu", dtype="float16")
