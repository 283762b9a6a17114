"""wav2vec 2.0 / HuBERT / WavLM / data2vec-audio adapters on random-init tiny models."""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.base import Utterance
from wordspace.pipeline.models.registry import build_model
from wordspace.pipeline.models.s3prl_adapter import S3prlAdapter
from wordspace.pipeline.models.speech import (
    TransformersSpeechAdapter,
    conv_geometry,
    conv_output_length,
)

# The conv stack of the base models (hop 320, window 400), with a tiny transformer on top.
BASE_CONV = {
    "conv_dim": [16] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
}
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}
CONFIGS = {
    "wav2vec2": transformers.Wav2Vec2Config,
    "hubert": transformers.HubertConfig,
    "wavlm": transformers.WavLMConfig,
    "data2vec-audio": transformers.Data2VecAudioConfig,
}
MODELS = {
    "wav2vec2": transformers.Wav2Vec2Model,
    "hubert": transformers.HubertModel,
    "wavlm": transformers.WavLMModel,
    "data2vec-audio": transformers.Data2VecAudioModel,
}


def save_tiny(folder: Path, model_type: str, **overrides: object) -> Path:
    torch.manual_seed(0)
    config = CONFIGS[model_type](**BASE_CONV, **TINY, **overrides)
    MODELS[model_type](config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("speech")
    return {kind: save_tiny(root / kind, kind) for kind in MODELS}


def loaded(folder: Path) -> TransformersSpeechAdapter:
    adapter = TransformersSpeechAdapter(str(folder))
    adapter.load("cpu")
    return adapter


def test_geometry_of_the_base_conv_stack() -> None:
    geometry = conv_geometry(BASE_CONV["conv_kernel"], BASE_CONV["conv_stride"], 16000)
    assert (geometry.hop, geometry.window, geometry.frame_rate) == (320, 400, 50.0)
    for n in [400, 719, 720, 16000, 48123]:
        expected = (n - 400) // 320 + 1
        assert conv_output_length(n, BASE_CONV["conv_kernel"], BASE_CONV["conv_stride"]) == expected
    assert conv_output_length(399, BASE_CONV["conv_kernel"], BASE_CONV["conv_stride"]) == 0


def test_geometry_matches_the_real_output_length(tiny_folders: dict[str, Path]) -> None:
    model = transformers.Wav2Vec2Model.from_pretrained(tiny_folders["wav2vec2"]).eval()
    adapter = TransformersSpeechAdapter(str(tiny_folders["wav2vec2"]))
    rng = np.random.default_rng(1)
    lengths = [400, 401, 719, 720, 721, 1039, 1040, 3333] + list(rng.integers(400, 20000, 20))
    with torch.inference_mode():
        for n in lengths:
            out = model(torch.randn(1, int(n))).last_hidden_state
            assert out.shape[1] == conv_output_length(int(n), adapter.kernels, adapter.strides)
            assert out.shape[1] == (n - adapter.geometry.window) // adapter.geometry.hop + 1


@pytest.mark.parametrize("kind", list(MODELS))
def test_adapter_shapes_and_layers(tiny_folders: dict[str, Path], kind: str) -> None:
    adapter = loaded(tiny_folders[kind])
    assert adapter.layer_names == ["layer_0", "layer_1", "layer_2"]
    assert adapter.dim == 32 and adapter.geometry.hop == 320 and adapter.geometry.window == 400
    assert adapter.checkpoint_path.endswith("model.safetensors")
    rng = np.random.default_rng(2)
    waveforms = [rng.standard_normal(n).astype(np.float32) for n in (8000, 5000, 8000)]
    frames = adapter.frames(waveforms)
    assert [f.shape for f in frames] == [(3, 24, 32), (3, 15, 32), (3, 24, 32)]
    # Batching (by equal length, or padded with a mask) gives what one-by-one gives.
    for waveform, batched in zip(waveforms, frames, strict=True):
        np.testing.assert_allclose(adapter.frames([waveform])[0], batched, atol=1e-4)
    assert not adapter.model.training


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert", "wavlm"])
def test_padded_batches_with_mask_equal_one_by_one(tmp_path: Path, kind: str) -> None:
    folder = save_tiny(tmp_path / kind, kind, feat_extract_norm="layer")
    adapter = loaded(folder)
    assert adapter.pads_with_mask
    rng = np.random.default_rng(3)
    waveforms = [rng.standard_normal(n).astype(np.float32) for n in (9000, 4100, 6500)]
    batched = adapter.frames(waveforms)
    for waveform, frames in zip(waveforms, batched, strict=True):
        np.testing.assert_allclose(adapter.frames([waveform])[0], frames, atol=1e-4)


def test_only_padding_invariant_models_pad(tiny_folders: dict[str, Path]) -> None:
    assert not TransformersSpeechAdapter(str(tiny_folders["wav2vec2"])).pads_with_mask
    assert not TransformersSpeechAdapter(str(tiny_folders["data2vec-audio"])).pads_with_mask


def test_word_pools_the_frames_known_by_construction(tiny_folders: dict[str, Path]) -> None:
    adapter = loaded(tiny_folders["hubert"])
    waveform = np.random.default_rng(4).standard_normal(16000).astype(np.float32)
    frames = adapter.frames([waveform])[0]
    # Frame i's stride cell is [0.0125 + 0.02 i - 0.01, 0.0125 + 0.02 i + 0.01) s: a word from
    # 0.2 s to 0.3 s overlaps the cells of frames 9..14 (cell 9 ends at 0.2125 s).
    utterance = Utterance(
        id="u",
        words=["word"],
        starts=np.array([0.2]),
        ends=np.array([0.3]),
        transcript="word",
        waveform=waveform,
    )
    vectors = adapter.embed([utterance])[0]
    np.testing.assert_allclose(vectors[:, 0], frames[:, 9:15].mean(axis=1), rtol=1e-5, atol=1e-6)


def test_normalisation_follows_the_preprocessor_config(tiny_folders: dict[str, Path]) -> None:
    folder = tiny_folders["wavlm"]
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
    try:
        adapter = loaded(folder)
        assert not adapter.normalise
        waveform = np.random.default_rng(5).standard_normal(4000).astype(np.float32)
        shifted = waveform * 7 + 1
        assert not np.allclose(adapter.frames([shifted])[0], adapter.frames([waveform])[0])
        adapter.normalise = True
        np.testing.assert_allclose(
            adapter.frames([shifted])[0], adapter.frames([waveform])[0], atol=1e-4
        )
    finally:
        (folder / "preprocessor_config.json").unlink()


def test_short_utterance_gets_one_frame(tiny_folders: dict[str, Path]) -> None:
    adapter = loaded(tiny_folders["wav2vec2"])
    assert adapter.frames([np.zeros(100, dtype=np.float32)])[0].shape == (3, 1, 32)


def test_errors_name_the_input(tmp_path: Path, tiny_folders: dict[str, Path]) -> None:
    with pytest.raises(WordspaceError, match="does not exist"):
        build_model(f"speech:{tmp_path / 'absent'}")
    bert = tmp_path / "bert"
    transformers.BertModel(
        transformers.BertConfig(
            hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
        )
    ).save_pretrained(bert)
    with pytest.raises(WordspaceError, match="not a speech model"):
        build_model(f"speech:{bert}")
    with pytest.raises(WordspaceError, match="no CUDA"):
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        TransformersSpeechAdapter(str(tiny_folders["wav2vec2"])).load("cuda")


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "hubert-as-wavlm", "hubert")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "wavlm"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WordspaceError, match="do not fit WavLMModel"):
        TransformersSpeechAdapter(str(folder)).load()


def test_registered_name_absent_from_cache_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WordspaceError, match="hf download facebook/wav2vec2-base") as error:
        build_model("wav2vec2-base")
    assert "\n" not in str(error.value)


class StandInS3PRLUpstream(torch.nn.Module):
    """s3prl.nn.S3PRLUpstream as far as the adapter uses it; left in training mode like s3prl.

    Frame i of layer l holds 1000 · l + i; the copies s3prl appends up to ceil(N / 320) frames
    hold -1, so a test sees whether any of them leaks into a word.
    """

    def __init__(self, name: str, path_or_url: str | None = None) -> None:
        super().__init__()
        if name == "wav2vec2_large":
            self.num_layers, self.hidden_sizes = 25, [1024] * 25
        else:
            self.num_layers, self.hidden_sizes = 13, [768] * 13
        self.train()

    def forward(
        self, wavs: torch.Tensor, wavs_len: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        n_samples = int(wavs_len[0])
        real = (n_samples - 400) // 320 + 1
        padded = -(-n_samples // 320)
        index = torch.cat([torch.arange(real, dtype=torch.float32), -torch.ones(padded - real)])
        layers = [
            (1000.0 * layer + index)[None, :, None].expand(1, padded, self.hidden_sizes[0])
            for layer in range(self.num_layers)
        ]
        return layers, [torch.tensor([padded])] * self.num_layers


@pytest.fixture
def stand_in_s3prl(monkeypatch: pytest.MonkeyPatch) -> None:
    package, nn_module = types.ModuleType("s3prl"), types.ModuleType("s3prl.nn")
    nn_module.S3PRLUpstream = StandInS3PRLUpstream
    package.nn = nn_module
    monkeypatch.setitem(sys.modules, "s3prl", package)
    monkeypatch.setitem(sys.modules, "s3prl.nn", nn_module)


def test_s3prl_keeps_real_frames_and_evaluates(stand_in_s3prl: None) -> None:
    adapter = build_model("s3prl:wav2vec2=/weights/wav2vec_small.pt")
    assert (
        isinstance(adapter, S3prlAdapter) and adapter.checkpoint_path == "/weights/wav2vec_small.pt"
    )
    adapter.load("cpu")
    assert not adapter.model.training
    n_samples = 16000 + 100  # 50 real frames; s3prl pads to 51
    frames = adapter.frames([np.zeros(n_samples, dtype=np.float32)])[0]
    assert frames.shape == (13, 50, 768) and frames.min() >= 0
    # A word from 0.9 s to 1.01 s ends in the last real frame's cell: it pools frames 44..49.
    utterance = Utterance(
        "u", ["w"], np.array([0.9]), np.array([1.01]), "w", np.zeros(n_samples, np.float32)
    )
    vectors = adapter.embed([utterance])[0]
    np.testing.assert_allclose(vectors[:, 0, 0], 1000 * np.arange(13) + np.mean(np.arange(44, 50)))


def test_s3prl_refuses_what_it_cannot_describe(stand_in_s3prl: None) -> None:
    with pytest.raises(WordspaceError, match="only the wav2vec2"):
        build_model("s3prl:apc")
    with pytest.raises(WordspaceError, match="25 hidden states"):
        build_model("s3prl:wav2vec2_large").load("cpu")


def test_s3prl_absent_or_broken_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "s3prl", None)
    monkeypatch.setitem(sys.modules, "s3prl.nn", None)
    with pytest.raises(WordspaceError, match="torchaudio") as error:
        build_model("s3prl:wav2vec2")
    assert "\n" not in str(error.value)


def test_real_s3prl_where_it_imports() -> None:
    try:
        importlib.import_module("s3prl.nn")
    except (ImportError, OSError) as error:
        pytest.skip(f"s3prl cannot import beside torch {torch.__version__}: {error}")
    adapter = build_model("s3prl:wav2vec2")
    assert adapter.layer_names[0] == "layer_0"
