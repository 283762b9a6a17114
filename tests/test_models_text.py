"""Text encoders: a random tiny BERT checked to the token, the real MiniLM, bundled archives."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.base import Utterance
from wordspace.pipeline.models.bundled import ConcatenatedFile, _unpack_zip, minilm_l6
from wordspace.pipeline.models.cache import build_once
from wordspace.pipeline.models.registry import build_model
from wordspace.pipeline.models.text import (
    TransformerTextModel,
    token_windows,
    window_of_token,
)

MAX_LENGTH = 16  # tokens, with [CLS] and [SEP]: windows of 14 word pieces
WORDS = ["the", "cat", "sat", "on", "mat", "bank", "river", "un", "##aff", "##able", "dog"]
LETTERS = [chr(code) for code in range(ord("a"), ord("z") + 1)]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *LETTERS]
VOCAB += [f"##{letter}" for letter in LETTERS]


def utterance(words: list[str]) -> Utterance:
    times = np.arange(len(words), dtype=np.float64)
    return Utterance("u", list(words), times, times + 1, " ".join(words))


@pytest.fixture(scope="module")
def tiny_bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(VOCAB)})
    tokenizer.model_max_length = MAX_LENGTH
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=MAX_LENGTH,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tiny_bert_folder: Path) -> TransformerTextModel:
    adapter = build_model(f"hf:{tiny_bert_folder}")
    adapter.load("cpu")
    return adapter


def reference_states(adapter: TransformerTextModel, words: list[str]) -> torch.Tensor:
    """Hidden states (layers, tokens, dim) of [CLS] words [SEP], run directly on the model."""
    tokenizer = adapter._tokenizer
    encoded = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.inference_mode():
        output = adapter._model(**encoded, output_hidden_states=True)
    return torch.stack(output.hidden_states)[:, 0]


def test_layers_are_embeddings_plus_every_hidden_layer(tiny_bert: TransformerTextModel) -> None:
    assert tiny_bert.layer_names == ["embeddings", "layer_1", "layer_2", "layer_3"]
    assert tiny_bert.dim == 32
    assert tiny_bert.modality == "text"
    assert tiny_bert.checkpoint_path.endswith("model.safetensors")
    [vectors] = tiny_bert.embed([utterance(["the", "cat"])])
    assert vectors.shape == (4, 2, 32) and vectors.dtype == np.float32


def test_word_is_the_mean_of_its_sub_word_tokens(tiny_bert: TransformerTextModel) -> None:
    words = ["the", "unaffable", "cat", "sat"]
    assert tiny_bert._tokenizer.tokenize("unaffable") == ["un", "##aff", "##able"]
    [vectors] = tiny_bert.embed([utterance(words)])
    states = reference_states(tiny_bert, words).numpy()
    # Tokens: [CLS] the un ##aff ##able cat sat [SEP]
    np.testing.assert_allclose(vectors[:, 1], states[:, 2:5].mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(vectors[:, 0], states[:, 1], atol=1e-5)
    np.testing.assert_allclose(vectors[:, 3], states[:, 6], atol=1e-5)
    assert not np.allclose(vectors[:, 1], states[:, 2], atol=1e-3)


def test_padding_in_a_batch_changes_nothing(tiny_bert: TransformerTextModel) -> None:
    short, long = ["the", "dog"], ["the", "cat", "sat", "on", "the", "unaffable", "mat"]
    together = tiny_bert.embed([utterance(short), utterance(long), utterance([])])
    assert together[2].shape == (4, 0, 32)
    for alone, words in ((together[0], short), (together[1], long)):
        np.testing.assert_allclose(alone, tiny_bert.embed([utterance(words)])[0], atol=1e-5)


def test_word_with_no_token_is_nan(tiny_bert: TransformerTextModel) -> None:
    [vectors] = tiny_bert.embed([utterance(["the", "", "cat"])])
    assert np.isnan(vectors[:, 1]).all()
    assert np.isfinite(vectors[:, [0, 2]]).all()


def test_windows_cover_every_token_with_most_context() -> None:
    assert token_windows(10, 14) == [(0, 10)]
    windows = token_windows(40, 14)
    assert windows == [(0, 14), (7, 21), (14, 28), (21, 35), (26, 40)]
    owner = window_of_token(40, windows)
    for token, window in enumerate(owner):
        start, stop = windows[window]
        assert start <= token < stop
    assert owner[[0, 12, 20, 33, 39]].tolist() == [0, 1, 2, 4, 4]


def test_long_utterance_is_embedded_in_overlapping_windows(tiny_bert: TransformerTextModel) -> None:
    assert tiny_bert._window == MAX_LENGTH - 2
    words = [WORDS[index % 7] for index in range(40)]  # one token each: 40 tokens
    [vectors] = tiny_bert.embed([utterance(words)])
    assert vectors.shape == (4, 40, 32) and np.isfinite(vectors).all()
    # Token 12 has most context in window [7, 21), token 20 in [14, 28), token 33 in [26, 40).
    for token, (start, stop) in ((0, (0, 14)), (12, (7, 21)), (20, (14, 28)), (33, (26, 40))):
        states = reference_states(tiny_bert, words[start:stop]).numpy()
        np.testing.assert_allclose(vectors[:, token], states[:, 1 + token - start], atol=1e-5)


def test_bad_folders_and_devices_are_one_line_errors(
    tiny_bert_folder: Path, tmp_path: Path
) -> None:
    from transformers import BertConfig, BertModel, GPT2Config, Wav2Vec2Config

    with pytest.raises(WordspaceError, match="no such folder"):
        build_model(f"hf:{tmp_path / 'absent'}")
    with pytest.raises(WordspaceError, match="not a transformers model folder"):
        build_model(f"hf:{tmp_path}")
    decoder = tmp_path / "decoder"
    GPT2Config().save_pretrained(decoder)
    with pytest.raises(WordspaceError, match="not a BERT-family text encoder"):
        build_model(f"hf:{decoder}")
    # Speech and Whisper folders are routed to their own adapters by `model_type`.
    audio = tmp_path / "audio"
    Wav2Vec2Config().save_pretrained(audio)
    with pytest.raises(WordspaceError, match="holds no weights"):  # the speech adapter's check
        build_model(f"hf:{audio}")
    # The tiny BERT's config with weights of another size: caught when loading.
    other = tmp_path / "other"
    BertModel(
        BertConfig(
            vocab_size=len(VOCAB),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=8,
        )
    ).save_pretrained(other)
    for file in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (other / file).write_bytes((tiny_bert_folder / file).read_bytes())
    adapter = build_model(f"hf:{other}")
    with pytest.raises(WordspaceError, match="another architecture"):
        adapter.load("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(WordspaceError, match="--device cpu"):
            build_model(f"hf:{tiny_bert_folder}").load("cuda")


def test_minilm_has_seven_layers_and_contextual_upper_layers() -> None:
    adapter = minilm_l6()
    assert len(adapter.layer_names) == 7 and adapter.dim == 384
    adapter.load("cpu")
    financial_words = ["the", "bank", "raised", "its", "rates"]
    river_words = ["the", "bank", "of", "the", "river"]
    financial, river = adapter.embed([utterance(financial_words), utterance(river_words)])
    # "bank" is one token at the same position: the embeddings layer has no context yet.
    np.testing.assert_allclose(financial[0, 1], river[0, 1], atol=1e-5)
    change = np.linalg.norm(financial[-1, 1] - river[-1, 1]) / np.linalg.norm(river[-1, 1])
    assert change > 0.05
    assert np.isfinite(financial).all() and np.isfinite(river).all()


def test_minilm_words_kept_between_calls_match_whole_utterance_tokenisation() -> None:
    adapter = minilm_l6()
    adapter.load("cpu")
    utterances = [
        utterance(["Hello,", "don't", "naïve", "U.S.A.", "co-op", "ÉCOLE", "unaffable"]),
        utterance(["the", "co-op's", "naïve", "hello,", "x", ""]),
    ]
    for _ in range(2):  # the second time every word comes from the adapter's kept pieces
        pieces = adapter._word_pieces(utterances)
        flat = [piece for word in pieces for piece in word]
        encoded = adapter._tokenizer(
            [list(item.words) for item in utterances],
            is_split_into_words=True,
            add_special_tokens=False,
        )["input_ids"]
        assert flat == encoded[0] + encoded[1]
    assert pieces[-1] == []  # a word with no token: NaN downstream


@pytest.mark.slow
def test_mpnet_unpacks_and_has_thirteen_layers() -> None:
    adapter = build_model("mpnet-base")
    assert len(adapter.layer_names) == 13 and adapter.dim == 768
    adapter.load("cpu")
    [vectors] = adapter.embed([utterance(["hello", "unaffable", "world"])])
    assert vectors.shape == (13, 3, 768) and np.isfinite(vectors).all()


def test_split_archive_reads_as_one_zip(tmp_path: Path) -> None:
    archive = tmp_path / "bundle.zip"
    rng = np.random.default_rng(0)
    payload = rng.bytes(50_000)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("model/config.json", '{"a": 1}')
        bundle.writestr("model/weights.bin", payload)
        bundle.writestr("model/desktop.ini", "litter")
    data = archive.read_bytes()
    cuts = [0, 7_000, 30_000, len(data)]
    parts = []
    for index, (start, stop) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        parts.append(tmp_path / f"bundle.zip.{index + 1:03d}")
        parts[-1].write_bytes(data[start:stop])
    with ConcatenatedFile(parts) as joined:
        assert joined.read() == data
        joined.seek(-10, 2)
        assert joined.read(100) == data[-10:]
        target = build_once(tmp_path / "unpacked", lambda folder: _unpack_zip(joined, folder))
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "weights.bin"]
    assert (target / "weights.bin").read_bytes() == payload


def test_failed_cache_build_leaves_nothing(tmp_path: Path) -> None:
    def broken(folder: Path) -> None:
        (folder / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        build_once(tmp_path / "target", broken)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_minilm_extracts_into_the_store_as_embedded_directly(indexed: str, client) -> None:
    from wordspace import open_store
    from wordspace.pipeline.extract import extract_model

    url = indexed
    extract_model(url, "minilm-l6", client=client, progress=False)
    embedding = open_store(url).embedding("minilm-l6")
    assert embedding.shape == (7, 14, 384)
    assert list(embedding.layer.values) == minilm_l6().layer_names
    adapter = minilm_l6()
    adapter.load("cpu")
    texts = [str(text) for text in embedding.text.values]
    for first, stop in ((0, 6), (6, 9)):  # the first two utterances of the fixture corpus
        [direct] = adapter.embed([utterance(texts[first:stop])])
        np.testing.assert_allclose(embedding.values[:, first:stop], direct, atol=1e-5)
    # Blocks of 4 words cut utterances (6, 3 and 5 words): each block keeps its own words.
    extract_model(url, "minilm-l6", name="cut", block_words=4, client=client, progress=False)
    np.testing.assert_allclose(open_store(url).embedding("cut").values, embedding.values, atol=1e-5)


def test_model_ids_resolve_from_the_local_hugging_face_cache(
    tiny_bert_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "hub" / "models--google-bert--bert-base-uncased"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    for file in tiny_bert_folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    adapter = build_model("bert-base-uncased")
    assert adapter.folder == snapshot and len(adapter.layer_names) == 4
    assert build_model("hf:google-bert/bert-base-uncased").folder == snapshot
    with pytest.raises(WordspaceError, match="huggingface-cli download nobody/nothing"):
        build_model("hf:nobody/nothing")
