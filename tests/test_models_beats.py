"""BEATs (our implementation) with random weights, and the Kaldi fbank it reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.base import Utterance
from wordspace.pipeline.models.beats import (
    FBANK_MEAN,
    FBANK_STD,
    BeatsAdapter,
    BeatsConfig,
    BeatsEncoder,
    relative_position_buckets,
)
from wordspace.pipeline.models.fbank import kaldi_fbank, mel_filterbank
from wordspace.pipeline.models.registry import build_model

TINY_CFG = {
    "input_patch_size": 16,
    "embed_dim": 32,
    "encoder_layers": 2,
    "encoder_embed_dim": 48,
    "encoder_ffn_embed_dim": 64,
    "encoder_attention_heads": 4,
    "deep_norm": True,
    "conv_pos": 16,
    "conv_pos_groups": 4,
    "relative_position_embedding": True,
    "num_buckets": 32,
    "max_distance": 64,
    "gru_rel_pos": True,
    "dropout": 0.1,  # a training option: read and ignored
}


def random_encoder() -> BeatsEncoder:
    torch.manual_seed(0)
    model = BeatsEncoder(BeatsConfig.from_dict(TINY_CFG))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def official_state(model: BeatsEncoder) -> dict[str, torch.Tensor]:
    """The state dict as the official code writes it: the shared bias table under every layer."""
    state = dict(model.state_dict())
    table = state["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    for index in range(1, model.config.encoder_layers):
        state[f"encoder.layers.{index}.self_attn.relative_attention_bias.weight"] = table
    return state


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("beats") / "BEATs_tiny.pt"
    torch.save({"cfg": TINY_CFG, "model": official_state(random_encoder())}, path)
    return path


@pytest.fixture(scope="module")
def adapter(checkpoint: Path) -> BeatsAdapter:
    beats = build_model(f"beats:{checkpoint}")
    assert isinstance(beats, BeatsAdapter)
    beats.load("cpu")
    return beats


def noise(n_samples: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n_samples) * 0.1).astype(np.float32)


def test_description_without_weights(checkpoint: Path) -> None:
    beats = BeatsAdapter(checkpoint)
    assert beats.layer_names == ["layer_1", "layer_2"] and beats.dim == 48
    assert (beats.geometry.hop, beats.geometry.window) == (2560, 2800)
    assert beats.geometry.frame_rate == 6.25
    assert beats.checkpoint_path == str(checkpoint)


def test_token_geometry(adapter: BeatsAdapter) -> None:
    for n_samples in [2800, 5359, 5360, 16000, 33333]:
        fbank_frames = (n_samples - 400) // 160 + 1
        steps = fbank_frames // 16
        with torch.inference_mode():
            layers, counted = adapter.model([torch.from_numpy(noise(n_samples))])
        assert counted == [steps]
        assert [tuple(layer.shape) for layer in layers] == [(1, steps * 8, 48)] * 2
        assert adapter.frames([noise(n_samples)])[0].shape == (2, steps, 48)


def test_reloaded_checkpoint_gives_identical_outputs(adapter: BeatsAdapter) -> None:
    waveform = noise(20000, seed=1)
    with torch.inference_mode():
        layers, steps = random_encoder()([torch.from_numpy(waveform)])
    expected = torch.stack(layers)[:, 0].view(2, steps[0], 8, 48).mean(dim=2).numpy()
    np.testing.assert_array_equal(adapter.frames([waveform])[0], expected)


def test_padded_batch_equals_one_by_one(adapter: BeatsAdapter) -> None:
    waveforms = [noise(n, seed=n) for n in (30000, 9000, 17000)]
    batched = adapter.frames(waveforms)
    for waveform, frames in zip(waveforms, batched, strict=True):
        np.testing.assert_allclose(adapter.frames([waveform])[0], frames, atol=1e-5)


def test_word_is_the_mean_of_the_time_steps_it_overlaps(adapter: BeatsAdapter) -> None:
    waveform = noise(32000, seed=2)
    with torch.inference_mode():
        layers, _ = adapter.model([torch.from_numpy(waveform)])
    tokens = torch.stack(layers)[:, 0].numpy()
    # Step i's cell is [0.16 i + 0.0075, 0.16 i + 0.1675) s: a word from 0.5 s to 0.9 s overlaps
    # steps 3, 4 and 5, i.e. tokens 24..47 (8 per step) and no token after the word.
    utterance = Utterance("u", ["word"], np.array([0.5]), np.array([0.9]), "word", waveform)
    vectors = adapter.embed([utterance])[0]
    np.testing.assert_allclose(vectors[:, 0], tokens[:, 24:48].mean(axis=1), rtol=1e-5, atol=1e-6)


def test_short_utterance_is_one_time_step(adapter: BeatsAdapter) -> None:
    assert adapter.frames([noise(1000)])[0].shape == (2, 1, 48)


def test_relative_position_buckets() -> None:
    distances = torch.tensor([0, 1, -1, 79, -79, 80, 400, 799, 5000, -5000])
    buckets = relative_position_buckets(distances, num_buckets=320, max_distance=800)
    # Exact below 80 (a quarter of 320), forward positions in the upper half, log beyond.
    assert buckets[:5].tolist() == [0, 161, 1, 239, 79]
    assert 80 <= buckets[5] - 160 < buckets[6] - 160 < 160
    assert buckets[8].item() == 319 and buckets[9].item() == 159


def test_checkpoint_errors(tmp_path: Path, checkpoint: Path) -> None:
    with pytest.raises(WordspaceError, match="does not exist"):
        BeatsAdapter(tmp_path / "absent.pt")
    not_beats = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, not_beats)
    with pytest.raises(WordspaceError, match="not a BEATs checkpoint"):
        BeatsAdapter(not_beats)
    wrong = tmp_path / "wrong.pt"
    torch.save(
        {"cfg": {**TINY_CFG, "encoder_layers": 3}, "model": torch.load(checkpoint)["model"]}, wrong
    )
    with pytest.raises(WordspaceError, match="do not fit the BEATs architecture"):
        BeatsAdapter(wrong).load()


def test_registered_name_says_where_the_checkpoint_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORDSPACE_CACHE", str(tmp_path))
    with pytest.raises(WordspaceError, match="BEATs_iter3.pt") as error:
        build_model("beats-iter3")
    assert "\n" not in str(error.value)


def test_fbank_frame_count_and_normalisation_constants() -> None:
    for n_samples in [399, 400, 559, 560, 16000]:
        expected = 0 if n_samples < 400 else (n_samples - 400) // 160 + 1
        assert kaldi_fbank(torch.zeros(n_samples)).shape == (expected, 128)
    assert (FBANK_MEAN, FBANK_STD) == (15.41663, 6.55582)


def test_fbank_tone_peaks_in_its_mel_filter() -> None:
    time = np.arange(16000) / 16000
    tone = torch.tensor(np.sin(2 * np.pi * 1000 * time) * 10000, dtype=torch.float32)
    fbank = kaldi_fbank(tone)
    filters = mel_filterbank(128, 512, 16000)
    strongest_filter_at_1khz = int(filters[:, round(1000 / (16000 / 512))].argmax())
    assert abs(int(fbank.mean(dim=0).argmax()) - strongest_filter_at_1khz) <= 1
    # Power spectrum: 10 times the amplitude adds 2 ln 10 to every bin well above the float floor.
    louder = kaldi_fbank(tone * 10)
    strong = fbank > 10
    assert strong.sum() > 1000
    np.testing.assert_allclose((louder - fbank)[strong].numpy(), 2 * np.log(10), atol=1e-3)


def test_fbank_matches_an_independent_kaldi_implementation() -> None:
    knf = pytest.importorskip("kaldi_native_fbank")
    waveform = noise(24000, seed=3) * 2**15
    options = knf.FbankOptions()
    options.frame_opts.dither = 0.0
    options.frame_opts.snip_edges = True
    options.mel_opts.num_bins = 128
    online = knf.OnlineFbank(options)
    online.accept_waveform(16000, waveform.tolist())
    online.input_finished()
    reference = np.stack([online.get_frame(i) for i in range(online.num_frames_ready)])
    ours = kaldi_fbank(torch.from_numpy(waveform)).numpy()
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=1e-3)
