"""The ASIF part of the compare stage: the study's (or the paired) protocol on two stored models."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from wordspace.cluster import on_backend
from wordspace.errors import WordspaceError, errors_prefixed
from wordspace.metrics.asif_protocols import asif_paired_protocol, asif_study_protocol
from wordspace.pipeline.selection import sample_words, select_layers
from wordspace.storage import store

PROTOCOLS = {"study": asif_study_protocol, "paired": asif_paired_protocol}


def asif_comparison(
    store_url: str,
    model_a: str,
    model_b: str,
    *,
    layers_a: str | None = None,
    layers_b: str | None = None,
    sample: int | None = None,
    seed: int = 0,
    ks: Sequence[int] = (100, 250),
    ps: Sequence[float] = (4, 6),
    protocol: str = "study",
    query_share: float = 0.15,
    gpu: bool = False,
) -> xr.Dataset:
    """ASIF accuracy of every layer pair over the (k, p) grid; variables prefixed `asif_`.

    Queries are a seeded random `query_share` of the words valid in both models; `k` larger
    than the number of anchors is an error naming the largest usable k.
    """
    if protocol not in PROTOCOLS:
        raise WordspaceError(f"--protocol {protocol!r}: choose study or paired")
    a = select_layers(store.open_embedding(store_url, model_a), layers_a, "--layers-a")
    b = select_layers(store.open_embedding(store_url, model_b), layers_b, "--layers-b")
    chosen = sample_words(a.sizes["word"], sample, seed)
    if chosen is None:
        chosen = np.arange(a.sizes["word"])
    valid = ~(
        np.isnan(a.isel(word=chosen).isel(dim=0).values).any(axis=0)
        | np.isnan(b.isel(word=chosen).isel(dim=0).values).any(axis=0)
    )
    chosen = chosen[valid]
    n_anchors = len(chosen) - round(query_share * len(chosen))
    if max(ks) > n_anchors:
        raise WordspaceError(
            f"--k {max(ks)}: only {n_anchors} anchor words are available; use k <= {n_anchors}"
        )
    a, b = on_backend(a.isel(word=chosen), gpu), on_backend(b.isel(word=chosen), gpu)
    with errors_prefixed(f"--a {model_a} (x) and --b {model_b} (y): "):
        results = PROTOCOLS[protocol](
            a, b, a["text"].values.astype(object), ks=tuple(ks), ps=tuple(ps), only=None,
            query_fraction=query_share, seed=seed,
        )  # fmt: skip
    results = results.assign_coords(
        layer_a=[str(name) for name in a["layer"].values],
        layer_b=[str(name) for name in b["layer"].values],
        query_word=("query", chosen[results["query_word"].values]),
    )
    renamed = results.rename({name: f"asif_{name}" for name in results.data_vars})
    renamed.attrs = {f"asif_{key}": value for key, value in results.attrs.items()}
    renamed.attrs["asif_n_words"] = int(len(chosen))
    return renamed
