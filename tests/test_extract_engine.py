"""The extraction engine: blocks on Dask, pooling to the frame, NaN handling, resume, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from wordspace import cli, open_store
from wordspace.errors import WordspaceError
from wordspace.pipeline.extract import extract_model, group_name
from wordspace.pipeline.models.base import AudioModelAdapter, FrameGeometry, ModelAdapter
from wordspace.pipeline.models.registry import ModelEntry, register
from wordspace.storage import store as st

HOP, WINDOW = 320, 400


class FrameIndexModel(AudioModelAdapter):
    """Frames that carry their own index (and the layer number), so pooling can be checked."""

    name = "frame-index"
    layer_names = ["first", "second"]
    dim = 2
    source = "none (test model)"
    geometry = FrameGeometry(16_000, HOP, WINDOW)

    def load(self, device="cpu", dtype="float32"):
        pass

    def frames(self, waveforms):
        out = []
        for waveform in waveforms:
            n = (len(waveform) - WINDOW) // HOP + 1
            index = np.arange(n, dtype=np.float32)
            layer = np.stack([index, np.full(n, 1.0, dtype=np.float32)], axis=1)
            out.append(np.stack([layer, layer * 10]))
        return out


class VocabularyModel(ModelAdapter):
    """A static model that knows only some words: the others must come back NaN."""

    name = "tiny-vocabulary"
    modality = "static"
    layer_names = ["vectors"]
    dim = 3
    source = "none (test model)"
    known = {"the": 1.0, "dog": 2.0, "sat": 3.0}

    def load(self, device="cpu", dtype="float32"):
        pass

    def embed(self, utterances):
        out = []
        for utterance in utterances:
            values = [self.known.get(word, np.nan) for word in utterance.words]
            out.append(np.repeat(np.asarray(values, np.float32)[None, :, None], 3, axis=2))
        return out


register(ModelEntry("frame-index", "test", FrameIndexModel))
register(ModelEntry("tiny-vocabulary", "test", VocabularyModel))


def expected_frames(start: float, end: float) -> np.ndarray:
    """Frames whose stride cell (centred on the window) overlaps [start, end), by brute force."""
    centres = (np.arange(1000) * HOP + WINDOW / 2) / 16_000
    half = HOP / 2 / 16_000
    return np.flatnonzero((centres - half < end) & (centres + half > start))


def test_audio_words_pool_the_frames_they_overlap(indexed, client):
    summary = extract_model(indexed, "frame-index", client=client, block_words=4, progress=False)
    assert summary.blocks_total == 4 and summary.missing_words == 0
    embedding = open_store(indexed).embedding("frame-index")
    assert embedding.dims == ("layer", "word", "dim")
    assert list(embedding.layer.values) == ["first", "second"]
    values = embedding.values
    for word in range(embedding.sizes["word"]):
        start, end = float(embedding.start[word]), float(embedding.end[word])
        frames = expected_frames(start, end)
        assert values[0, word, 0] == pytest.approx(frames.mean())
        assert values[1, word, 0] == pytest.approx(10 * frames.mean())
    attrs = embedding.attrs
    assert attrs["frame_rate"] == 50 and attrs["model"] == "frame-index"
    assert "numpy" in attrs["package_versions"] and attrs["complete"]


def test_unrepresentable_words_are_nan_and_counted(indexed, client):
    summary = extract_model(indexed, "tiny-vocabulary", client=client, progress=False)
    values = open_store(indexed).embedding("tiny-vocabulary").values[0, :, 0]
    texts = open_store(indexed).words.text.values
    for text, value in zip(texts, values, strict=True):
        assert np.isnan(value) == (text not in VocabularyModel.known)
    assert summary.missing_words == 7
    assert "cat" in summary.missing_sample
    assert st.model_attrs(indexed, "tiny-vocabulary")["n_missing_words"] == 7


def test_resume_does_only_missing_blocks(indexed, client):
    extract_model(indexed, "frame-index", client=client, block_words=4, progress=False)
    reference = open_store(indexed).embedding("frame-index").values
    # Forget two blocks, as if the run had stopped before writing them.
    for block in (1, 3):
        st.zarr.open_group(st.zarr_store(indexed), path="models/frame-index")["block_complete"][
            block
        ] = 0
    again = extract_model(indexed, "frame-index", client=client, block_words=4, progress=False)
    assert again.blocks_done == 2
    np.testing.assert_array_equal(open_store(indexed).embedding("frame-index").values, reference)


def test_layer_subset_and_float16(indexed, client):
    extract_model(
        indexed,
        "frame-index",
        name="fi16",
        layers="1",
        dtype="float16",
        client=client,
        progress=False,
    )
    embedding = open_store(indexed).embedding("fi16")
    assert list(embedding.layer.values) == ["second"] and embedding.dtype == np.float16


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spec": "no-such-model"}, "unknown model 'no-such-model'; known models:"),
        ({"spec": "frame-index", "layers": "0,7"}, "layer 7 is out of range"),
        ({"spec": "frame-index", "device": "cuda"}, "no CUDA GPU"),
        ({"spec": "frame-index", "dtype": "int8"}, "--dtype"),
    ],
)
def test_bad_requests_leave_the_store_unchanged(indexed, client, kwargs, message):
    spec = kwargs.pop("spec")
    with pytest.raises(WordspaceError, match=message):
        extract_model(indexed, spec, client=client, progress=False, **kwargs)
    assert open_store(indexed).models == []


def test_store_without_word_table(tmp_path, client):
    with pytest.raises(WordspaceError, match="no word table"):
        extract_model(str(tmp_path / "none.zarr"), "frame-index", client=client, progress=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model", "frame-index", "--layers", "0,7"], "layer 7 is out of range"),
    ],
)
def test_extract_command_rejects_bad_requests_before_starting_a_cluster(
    indexed, monkeypatch, capsys, argv, message
):
    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started for a request that cannot run")

    monkeypatch.setattr(cli, "_cluster", no_cluster)
    assert cli.main(["extract", indexed, *argv]) == 2
    assert message in capsys.readouterr().err
    assert open_store(indexed).models == []
    assert cli.main(["extract", indexed + ".missing", "--model", "frame-index"]) == 2
    assert "no word table" in capsys.readouterr().err


def test_group_names():
    assert group_name("minilm-l6") == "minilm-l6"
    assert group_name("hf:/models/bert-base-uncased") == "hf-bert-base-uncased"


def test_packing_consecutive_utterances_keeps_each_word_on_its_frames(indexed, client):
    """Packed runs shift word times by the utterance's offset, so a model whose frames encode
    their position within the input gives each word the frames of its own span plus the
    frames of the utterances before it in the run."""
    extract_model(indexed, "frame-index", client=client, progress=False)
    alone = open_store(indexed).embedding("frame-index").values
    extract_model(
        indexed, "frame-index", name="packed", pack_seconds=30.0, client=client, progress=False
    )
    packed = open_store(indexed).embedding("packed")
    assert packed.attrs["pack_seconds"] == 30.0
    words = open_store(indexed).words
    durations = dict(zip(words.utterance_id.values, words.duration.values, strict=True))
    # Speaker 1001 chapter 10 has two utterances: the second one's frames start after the first.
    second = np.flatnonzero(words.utterance.values == "1001-10-0001")
    shift = round(durations["1001-10-0000"] * 16_000 / HOP)
    np.testing.assert_allclose(packed.values[0, second, 0], alone[0, second, 0] + shift, atol=1e-4)
    first = np.flatnonzero(words.utterance.values == "1001-10-0000")
    np.testing.assert_array_equal(packed.values[:, first], alone[:, first])
    with pytest.raises(WordspaceError, match="--pack-seconds"):
        extract_model(indexed, "frame-index", name="packed", client=client, progress=False)
