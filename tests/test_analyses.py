"""The study's analyses on small synthetic data whose right answer is planted."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from wordspace.errors import WordspaceError
from wordspace.pipeline.analyses import (
    asif_maps,
    heatmaps,
    layer_curves,
    phonetic_semantic,
    retrieval_errors,
    stability,
)
from wordspace.pipeline.analyses.common import resampling_groups

STRENGTH = (0.1, 0.4, 0.8, 0.4, 0.1)  # how much of the text space each audio layer carries
BEST = "L2"


def planted(n_tokens=480, n_types=40, dim=12, strength=STRENGTH, n_speakers=12, seed=0):
    """An audio model whose layer L2 is a rotated, slightly noisy copy of a static text model."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_types, dim))
    types = rng.integers(0, n_types, n_tokens)
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    layers = [
        w * base[types] @ rotation + (1 - w) * 1.5 * rng.standard_normal((n_tokens, dim))
        for w in strength
    ]
    coords = {
        "text": ("word", np.array([f"w{t}" for t in types], dtype=object)),
        "speaker": ("word", np.array([str(i % n_speakers) for i in range(n_tokens)])),
        "utterance": ("word", np.array([str(i // 6) for i in range(n_tokens)])),
    }
    audio = xr.DataArray(
        np.stack(layers),
        dims=("layer", "word", "dim"),
        coords={"layer": [f"L{i}" for i in range(len(strength))], **coords},
        name="audio",
    )
    text = xr.DataArray(
        base[types][None],
        dims=("layer", "word", "dim"),
        coords={"layer": ["vectors"], **coords},
        name="glove",
    )
    return audio, text


@pytest.fixture(scope="module")
def models():
    return planted()


def test_layer_curves_peak_at_the_planted_layer_with_bands(models):
    audio, text = models
    groups, kind = resampling_groups(audio)
    assert kind == "speaker"
    results = layer_curves.layer_curves(
        audio, text.isel(layer=0), groups, n_boot=8, text=audio["text"].values, asif_k=100
    )
    assert list(results["metric"].values) == ["cka", "cka_debiased", "cca", "asif"]
    for metric in results["metric"].values:
        curve = results["value"].sel(metric=metric)
        assert str(curve["layer"].values[int(curve.argmax("layer"))]) == BEST, metric
    assert (results["low"] <= results["high"]).all()
    best = results.sel(layer=BEST, metric="cka")
    assert best["low"] > results.sel(layer="L0", metric="cka")["high"]
    assert results.attrs["n_groups"] == 12
    assert "layer L2 of audio is closest to glove" in layer_curves.reading(results)


def test_bootstrap_uses_utterances_when_speakers_are_few():
    audio, _ = planted(n_speakers=3)
    groups, kind = resampling_groups(audio)
    assert kind == "utterance" and len(np.unique(groups)) == 80


def test_stability_converges_to_the_full_curve_from_random_subsamples(models):
    audio, text = models
    results = stability.stability(audio, text.isel(layer=0), sizes=[20, 400], n_seeds=3)
    mean = results["pearson"].mean("seed")
    assert float(mean.sel(size=400)) > 0.99
    assert float(mean.sel(size=400)) >= float(mean.sel(size=20))
    # Random subsamples, not prefixes: seeds differ from one another.
    curves = results["curve"].sel(size=20).values
    assert not np.allclose(curves[0], curves[1])
    assert stability.stable_size(results) in (20, 400)
    with pytest.raises(WordspaceError, match="sizes"):
        stability.stability(audio, text.isel(layer=0), sizes=[10_000])


def test_heatmap_across_models_marks_the_planted_pair(models):
    audio, text = models
    second = xr.concat([text, text * 0 + np.random.default_rng(1).standard_normal(text.shape)],
                       dim="layer").assign_coords(layer=["vectors", "noise"])  # fmt: skip
    second.name = "glove2"
    results = heatmaps.layer_heatmap(audio, second, metrics=["cka", "cca"])
    assert heatmaps.best_pair(results["cka"], within=False) == (2, 0)
    assert list(results["layer_b"].values) == ["vectors", "noise"]
    assert "audio layer L2 × glove2 layer vectors" in heatmaps.reading(results)


def test_heatmap_within_a_model_marks_the_most_alike_distinct_layers():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((300, 8))
    layers = [rng.standard_normal((300, 8)) for _ in range(4)]
    layers[3] = base
    layers[1] = base + 0.05 * rng.standard_normal((300, 8))
    model = xr.DataArray(np.stack(layers), dims=("layer", "word", "dim"),
                         coords={"layer": ["a", "b", "c", "d"]}, name="m")  # fmt: skip
    results = heatmaps.layer_heatmap(model)
    assert results.attrs["within"]
    assert heatmaps.best_pair(results["cka"], within=True) == (1, 3)
    np.testing.assert_allclose(np.diag(results["cka"].values), 1, atol=1e-6)
    # Whichever way the symmetric pair rounds, the lower layer comes first.
    nudged = results["cka"].copy()
    nudged[3, 1] += 1e-12
    assert heatmaps.best_pair(nudged, within=True) == (1, 3)


def test_asif_maps_find_the_planted_pair_and_fill_the_table(models):
    audio, text = models
    results = asif_maps.asif_maps(audio, text, audio["text"].values, k=100, p=4,
                                  sweep=[(50, 1), (100, 4)])  # fmt: skip
    assert results.attrs["best_layer_a"] == BEST
    assert float(results["top1"].sel(layer_a=BEST).max()) > 0.9
    assert float(results["top1"].sel(layer_a="L0").max()) < 0.5
    assert (results["top5"] >= results["top1"]).all()
    table = results["sweep_top1"]
    assert np.isnan(table.sel(k=50, p=4)) and np.isfinite(table.sel(k=100, p=4))
    queries = results["query_word"].values
    assert (results["retrieved_word"].values[:, 0] == queries).mean() > 0.9
    assert results.attrs["n_queries"] == 72 and results.attrs["n_anchors"] == 408


def _asif_result(queries, retrieved, anchors):
    return xr.Dataset(
        {
            "query_word": (("query",), np.array(queries)),
            "retrieved_word": (("query", "rank"), np.array(retrieved)),
            "anchor_word": (("anchor",), np.array(anchors)),
        }
    )


def test_retrieval_errors_table_of_words_missed_by_every_model():
    queries = ["rhythm", "cat", "dog", "rhythm"]
    first = _asif_result(
        queries,
        [["room"] * 5, ["hat"] * 5, ["dog", "a", "b", "c", "d"], ["room", "rum", "a", "b", "c"]],
        ["cat", "dog"],
    )
    second = _asif_result(
        queries,
        [["em"] * 5, ["cat", "a", "b", "c", "d"], ["dog"] * 5, ["em"] * 5],
        ["cat", "dog"],
    )
    results = retrieval_errors.retrieval_errors({"wav2vec": first, "encodec": second})
    np.testing.assert_allclose(results["miss_share"].values, [0.75, 0.5])
    assert list(results["missed_word"].values) == ["rhythm"]
    assert bool(results["never_anchor"].values[0])
    assert list(results["retrieved"].values[0]) == ["room ×6, a, b, c, rum", "em ×10"]
    assert retrieval_errors.table_rows(results)[0][0] == "rhythm †"
    assert retrieval_errors.summarise_retrieved(["room"] * 5) == "room ×5"


def test_levenshtein_on_phone_sequences():
    assert phonetic_semantic.levenshtein(["K", "AE", "T"], ["S", "AE", "T"]) == 1
    assert phonetic_semantic.levenshtein(["K", "AE", "T"], []) == 3
    assert phonetic_semantic.levenshtein(["AH"], ["AH"]) == 0


def test_phonetic_neighbours_are_closer_in_a_model_of_sound():
    rng = np.random.default_rng(3)
    inventory = [f"P{i}" for i in range(12)]
    n_types, dim = 150, 16
    phones = [list(rng.choice(inventory, size=rng.integers(2, 5))) for _ in range(n_types)]
    meaning = rng.standard_normal((n_types, dim))
    # A model of sound: one-hot of each (position, phone) summed; a model of meaning: text + noise.
    sound = np.zeros((n_types, 5 * len(inventory)))
    for t, sequence in enumerate(phones):
        for position, phone in enumerate(sequence):
            sound[t, position * len(inventory) + inventory.index(phone)] = 1
    results = phonetic_semantic.phonetic_semantic(
        {"sound": sound, "meaning": meaning + 0.3 * rng.standard_normal(meaning.shape)},
        phones,
        meaning,
        n_pairs=4000,
        shares=(0.02, 0.1, 1.0),
    )
    at = results["mean_cosine"].sel(share=0.02)
    assert at.sel(model="sound", distance="phonetic") < at.sel(model="sound", distance="semantic")
    assert at.sel(model="meaning", distance="semantic") < at.sel(
        model="meaning", distance="phonetic"
    )
    # With every pair selected, both distance types average the same pairs.
    full = results["mean_cosine"].sel(share=1.0)
    np.testing.assert_allclose(full.sel(distance="phonetic"), full.sel(distance="semantic"))
    assert results.attrs["n_pairs"] == 4000


def test_type_means_skip_nan_tokens():
    vectors = np.array([[1.0, 0], [3, 0], [np.nan, 1], [0, 2]])
    types, means = phonetic_semantic.type_means(vectors, ["a", "a", "b", "b"])
    assert types == ["a", "b"]
    np.testing.assert_allclose(means, [[2, 0], [0, 2]])
