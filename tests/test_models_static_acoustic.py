"""Static vectors (GloVe files and the bundled GloVe 6B 50-d) and the log-mel / MFCC baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wordspace.errors import WordspaceError
from wordspace.pipeline.models import static
from wordspace.pipeline.models.acoustic import GEOMETRY, dct_matrix, deltas
from wordspace.pipeline.models.base import Utterance, pool_frames
from wordspace.pipeline.models.fbank import mel_filterbank
from wordspace.pipeline.models.registry import build_model

SAMPLE_RATE = 16000


def utterance(words: list[str], waveform: np.ndarray | None = None) -> Utterance:
    times = np.arange(len(words), dtype=np.float64)
    return Utterance("u", list(words), times, times + 1, " ".join(words), waveform)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("WORDSPACE_CACHE", str(cache))
    return cache


def test_bundled_glove_looks_up_real_vectors_and_nans_unknown_words() -> None:
    glove = build_model("glove-6b-50d")
    assert glove.layer_names == ["vectors"] and glove.dim == 50
    glove.load("cpu")
    [vectors] = glove.embed([utterance(["the", "zzqxv", "king"])])
    assert vectors.shape == (1, 3, 50) and vectors.dtype == np.float32
    # First numbers of "the" in glove.6B.50d.txt.
    np.testing.assert_allclose(vectors[0, 0, :5], [0.418, 0.24968, -0.41242, 0.1217, 0.34527])
    assert np.isnan(vectors[0, 1]).all()
    king, queen, banana = glove.embed([utterance(["king", "queen", "banana"])])[0][0]

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cosine(king, queen) > cosine(king, banana) + 0.3
    np.testing.assert_array_equal(vectors[0, 2], king)


def write_vectors(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_text_file_is_read_once_into_the_cache(
    tmp_path: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_vectors(
        tmp_path / "tiny.300d.txt",
        ["the 1 2 3", "new york 4 5 6", "cat 0.5 -0.25 1e-2", "the 9 9 9", "", "dog 7 8 9"],
    )
    model = build_model(f"glove:{path}")
    assert (model.name, model.dim, model.modality) == ("tiny.300d", 3, "static")
    model.load("cpu")
    [vectors] = model.embed([utterance(["cat", "horse", "new york", "the"])])
    np.testing.assert_allclose(vectors[0, 0], [0.5, -0.25, 0.01])
    assert np.isnan(vectors[0, 1]).all()
    np.testing.assert_allclose(vectors[0, 2], [4, 5, 6])
    np.testing.assert_allclose(vectors[0, 3], [1, 2, 3])  # the first of a duplicated word
    [cached] = list((private_cache / "static").iterdir())
    assert np.load(cached / "vectors.npy").shape == (5, 3)

    def no_rebuild(*args: object) -> None:
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(static, "_build_text_cache", no_rebuild)
    again = build_model(f"glove:{path}")
    again.load("cpu")
    np.testing.assert_array_equal(again.embed([utterance(["dog"])])[0][0, 0], [7, 8, 9])
    monkeypatch.undo()
    monkeypatch.setenv("WORDSPACE_CACHE", str(private_cache))
    write_vectors(path, ["the 1 2 3", "dog 1 1 1"])  # another size and mtime: another cache
    changed = build_model(f"glove:{path}")
    changed.load("cpu")
    np.testing.assert_array_equal(changed.embed([utterance(["dog"])])[0][0, 0], [1, 1, 1])
    assert len(list((private_cache / "static").iterdir())) == 2


def test_word2vec_header_is_skipped(tmp_path: Path) -> None:
    path = write_vectors(tmp_path / "w2v.txt", ["2 2", "apple 1 2 ", "pear 3 4 "])
    model = build_model(f"glove:{path}")
    assert model.dim == 2
    model.load("cpu")
    np.testing.assert_array_equal(model.embed([utterance(["pear"])])[0][0, 0], [3, 4])


def test_chunks_of_the_text_file_are_all_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(static, "LINES_PER_CHUNK", 7)
    rng = np.random.default_rng(1)
    table = rng.normal(size=(30, 4)).astype(np.float32)
    lines = [f"w{row} " + " ".join(repr(float(v)) for v in table[row]) for row in range(30)]
    model = build_model(f"glove:{write_vectors(tmp_path / 'many.txt', lines)}")
    model.load("cpu")
    words = [f"w{row}" for row in range(29, -1, -1)]
    np.testing.assert_array_equal(model.embed([utterance(words)])[0][0], table[::-1])


def test_bad_vector_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(WordspaceError, match="no such file"):
        build_model(f"glove:{tmp_path / 'absent.txt'}")
    broken = build_model(f"glove:{write_vectors(tmp_path / 'bad.txt', ['a 1 2', 'b 1 x'])}")
    with pytest.raises(WordspaceError, match="is not a word and 2 numbers"):
        broken.load("cpu")
    assert not list((tmp_path / "cache" / "static").iterdir())


def tone_after(onset_seconds: float, duration_seconds: float = 1.0) -> np.ndarray:
    """Silence, then a 1 kHz tone from `onset_seconds` on."""
    time = np.arange(int(duration_seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return np.where(time >= onset_seconds, 0.3 * np.sin(2 * np.pi * 1000 * time), 0.0).astype(
        np.float32
    )


@pytest.mark.parametrize("name, dim", [("logmel", 80), ("mfcc", 13), ("mfcc-deltas", 39)])
def test_frame_count_follows_the_kaldi_geometry(name: str, dim: int) -> None:
    model = build_model(name)
    assert model.geometry == GEOMETRY and model.geometry.frame_rate == 100
    assert model.dim == dim and len(model.layer_names) == 1
    model.load("cpu")
    lengths = [1, 399, 400, 401, 559, 560, 561, 16000, 16123]
    frames = model.frames([np.ones(n, dtype=np.float32) * 0.01 for n in lengths])
    for n, features in zip(lengths, frames, strict=True):
        expected = 1 + (max(n, 400) - 400) // 160
        assert features.shape == (1, expected, dim)
        assert np.isfinite(features).all()


def test_a_tone_starts_in_the_frame_whose_window_first_reaches_it() -> None:
    model = build_model("logmel")
    model.load("cpu")
    # Onset at sample 8000: frame 47 reads [7520, 7920), frame 48 reads [7680, 8080).
    waveform = tone_after(0.5)
    [frames] = model.frames([waveform])
    energy = frames[0].max(axis=1)
    floor = np.log(np.finfo(np.float32).eps)
    np.testing.assert_allclose(energy[:48], floor, atol=1e-4)
    assert (energy[48:] > floor + 10).all()
    # A word [0.49, 0.51) overlaps the stride cells of frames 48, 49 and 50 only:
    # cell i is [(160 i + 120) / 16000, (160 i + 280) / 16000).
    [pooled] = model.embed(
        [Utterance("u", ["w"], np.array([0.49]), np.array([0.51]), "w", waveform)]
    )
    np.testing.assert_allclose(pooled[0, 0], frames[0, 48:51].mean(axis=0), rtol=1e-6)
    # A word inside the silence is silence.
    silent = pool_frames(frames, GEOMETRY, np.array([0.1]), np.array([0.4]))
    np.testing.assert_allclose(silent[0, 0], floor, atol=1e-4)


def test_a_tone_peaks_in_the_mel_bin_around_its_frequency() -> None:
    model = build_model("logmel")
    model.load("cpu")
    [frames] = model.frames([tone_after(0.0)])
    filters = mel_filterbank(80, 512, SAMPLE_RATE).numpy()
    tone_bin = round(1000 / (SAMPLE_RATE / 512))
    expected = int(np.argmax(filters[:, tone_bin]))
    assert abs(int(np.argmax(frames[0, 10])) - expected) <= 1


def test_mfcc_is_the_liftered_dct_of_log_mel_with_deltas() -> None:
    np.testing.assert_allclose(
        (dct_matrix(23, 23) @ dct_matrix(23, 23).T).numpy(), np.eye(23), atol=1e-12
    )
    ramp = torch.arange(20, dtype=torch.float32)[:, None] * torch.tensor([[0.5, -2.0]])
    slopes = deltas(ramp)
    np.testing.assert_allclose(slopes[2:-2].numpy(), np.tile([0.5, -2.0], (16, 1)), atol=1e-6)
    np.testing.assert_allclose(slopes[0].numpy(), [0.5 * 0.5, -2.0 * 0.5], atol=1e-6)
    mfcc, with_deltas = build_model("mfcc"), build_model("mfcc-deltas")
    mfcc.load("cpu")
    with_deltas.load("cpu")
    signal = tone_after(0.3, 0.6)
    [plain] = mfcc.frames([signal])
    [full] = with_deltas.frames([signal])
    np.testing.assert_allclose(full[0, :, :13], plain[0], rtol=1e-6)
    np.testing.assert_allclose(
        full[0, :, 13:26], deltas(torch.from_numpy(plain[0])).numpy(), atol=1e-4
    )
    # c0 jumps where the tone starts: frame 28, [4480, 4880), is the first to read sample 4800.
    np.testing.assert_allclose(plain[0, :28, 0], plain[0, 0, 0], rtol=1e-6)
    assert plain[0, 28, 0] > plain[0, 27, 0] + 20


def test_acoustic_models_refuse_a_missing_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(WordspaceError, match="--device cpu"):
        build_model("mfcc").load("cuda")


@pytest.mark.slow
@pytest.mark.parametrize("name, dim", [("glove-6b-50d", 50), ("logmel", 80), ("mfcc", 13)])
def test_extracts_into_the_store(name: str, dim: int, indexed: str, client) -> None:
    from wordspace import open_store
    from wordspace.pipeline.extract import extract_model

    url = indexed
    summary = extract_model(url, name, client=client, progress=False)
    embedding = open_store(url).embedding(name)
    assert embedding.dims == ("layer", "word", "dim")
    assert embedding.shape == (1, 14, dim)
    assert summary.missing_words == 0 and np.isfinite(embedding.values).all()
    assert embedding.attrs["model"] == name and embedding.attrs["complete"]
