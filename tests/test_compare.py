"""The compare stage and command: grids from the store, stored under /comparisons."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PHONES, build_corpus

from wordspace import open_store
from wordspace.cli import main
from wordspace.errors import WordspaceError
from wordspace.metrics import linear_cka
from wordspace.pipeline.compare import global_similarities, parse_metrics
from wordspace.pipeline.index import index_corpus
from wordspace.storage import store as st


def write_model(url: str, name: str, values: np.ndarray) -> None:
    n_layers, n_words, dim = values.shape
    st.create_embedding(
        url,
        name,
        layer_names=[f"{name}.{i}" for i in range(n_layers)],
        n_words=n_words,
        dim=dim,
        dtype="float32",
        block_words=n_words,
        attrs={"model": name},
    )
    st.write_embedding_block(url, name, 0, values)


@pytest.fixture
def store_with_models(small_corpus, tmp_path):
    url = str(tmp_path / "store.zarr")
    index_corpus(small_corpus.corpus, small_corpus.alignments, url)
    rng = np.random.default_rng(1)
    base = rng.standard_normal((14, 4)).astype(np.float32)
    # Layer 1 of "a" is a rotation of "b"'s only layer: the best cell is known.
    rotation, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    a = np.stack([rng.standard_normal((14, 4)), base @ rotation, rng.standard_normal((14, 4))])
    write_model(url, "a", a.astype(np.float32))
    write_model(url, "b", base[None])
    return url, a, base


def test_grid_matches_direct_metric(store_with_models):
    url, a, base = store_with_models
    grid = global_similarities(url, "a", "b", ["cka", "cca"])
    assert list(grid.layer_a.values) == ["a.0", "a.1", "a.2"]
    for layer in range(3):
        expected = linear_cka(a[layer], base)
        assert float(grid.cka[layer, 0]) == pytest.approx(expected, rel=1e-6)
    assert float(grid.cka[1, 0]) == pytest.approx(1.0)
    assert int(np.argmax(grid.cca.values[:, 0])) == 1


def test_compare_command_stores_and_prints(store_with_models, capsys):
    url, *_ = store_with_models
    assert main(["compare", url, "--a", "a", "--b", "b", "--workers", "1"]) == 0
    output = capsys.readouterr().out
    assert "cka (rows: a, columns: b)" in output and "1.000*" in output
    stored = open_store(url).comparison("a", "b")
    assert set(stored.data_vars) >= {"cka", "cka_debiased", "cca"}
    assert stored.cka.dims == ("layer_a", "layer_b")
    # Same model against itself, a layer subset, and a sample of words.
    assert (
        main(
            [
                "compare",
                url,
                "--a",
                "a",
                "--b",
                "a",
                "--layers-a",
                "0,a.1",
                "--layers-b",
                "a.1",
                "--metrics",
                "cka",
                "--sample",
                "10",
            ]
        )
        == 0
    )
    self_grid = open_store(url).comparison("a", "a")
    assert self_grid.cka.shape == (2, 1) and float(self_grid.cka[1, 0]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--a", "a", "--b", "missing"], "no model 'missing'"),
        (["--a", "a", "--b", "b", "--layers-a", "9"], "no layer '9'"),
        (["--a", "a", "--b", "b", "--metrics", "cka,svcca"], "unknown svcca"),
        (["--a", "a", "--b", "b", "--ridge", "1.5"], "wordspace: error: --ridge=1.5 is outside"),
    ],
)
def test_bad_compare_requests(store_with_models, capsys, argv, message):
    url, *_ = store_with_models
    assert main(["compare", url, *argv]) == 2
    assert message in capsys.readouterr().err
    assert open_store(url).comparison("a", "b") is None


def test_parse_metrics():
    assert parse_metrics("cka, cca") == ["cka", "cca"]
    with pytest.raises(WordspaceError):
        parse_metrics("")


def test_asif_compare_stores_accuracies_and_retrieved_words(tmp_path, capsys):
    words = list(PHONES)
    rng = np.random.default_rng(3)
    utterances = [("1001", "10", f"{i:04d}", list(rng.choice(words, size=6))) for i in range(40)]
    corpus = build_corpus(tmp_path / "big", utterances=utterances)
    url = str(tmp_path / "big.zarr")
    index_corpus(corpus.corpus, corpus.alignments, url)
    texts = open_store(url).words.text.values
    types = {word: rng.standard_normal(8) for word in words}
    text_space = np.stack([types[t] + 0.05 * rng.standard_normal(8) for t in texts])
    rotation, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    audio = np.stack([rng.standard_normal(text_space.shape), text_space @ rotation])
    write_model(url, "audio", audio.astype(np.float32))
    write_model(url, "text", text_space[None].astype(np.float32))
    argv = ["compare", url, "--a", "audio", "--b", "text", "--metrics", "cka,asif",
            "--k", "20,50", "--p", "1,4", "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    stored = open_store(url).comparison("audio", "text")
    assert stored.asif_top1.dims == ("layer_a", "layer_b", "k", "p")
    assert float(stored.asif_top1.sel(layer_a="audio.1").max()) == pytest.approx(1.0)
    assert float(stored.asif_top1.sel(layer_a="audio.0").max()) < 0.6
    assert stored.asif_retrieved_words.dims == ("layer_a", "layer_b", "query", "rank")
    assert "cka" in stored and "asif_top1" in capsys.readouterr().out
    assert main(["compare", url, "--a", "audio", "--b", "text", "--metrics", "asif",
                 "--k", "5000"]) == 2  # fmt: skip
    assert "anchor words are available" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        (["--metrics", "cka"], "--a a (A) and --b b (B): B contains infinite values"),
        (["--metrics", "asif", "--k", "3"], "--a a (x) and --b b (y): anchors_x or anchors_y"),
    ],
)
def test_infinite_values_on_a_cluster_are_one_line(store_with_models, capfd, metrics, message):
    """The workers raise the error; it reaches the terminal once, not also as a worker's log."""
    url, a, base = store_with_models
    base = base.copy()
    base[3:6, 1] = np.inf  # three words: ASIF's queries (2 of 14) read only their A side
    write_model(url, "b", base[None])
    assert main(["compare", url, "--a", "a", "--b", "b", *metrics, "--workers", "1"]) == 2
    errors = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and message in errors[0] and "replace them with NaN" in errors[0]
    assert open_store(url).comparison("a", "b") is None
