"""The study's first two stages on one store: extract every model, compare the study's pairs.

Each step is skipped when the store already holds its result, so a second run only reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from distributed import Client

from wordspace.cluster import torch_device
from wordspace.pipeline.compare import compare_models
from wordspace.pipeline.extract import extract_model, group_name
from wordspace.pipeline.models.registry import build_model
from wordspace.storage import store

STUDY_METRICS = ("cka", "cka_debiased", "cca", "asif")


@dataclass(frozen=True)
class StudyPlan:
    """Which models to extract and which pairs to compare."""

    models: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]


def study_pairs(
    models: Sequence[str], store_url: str | None = None, pack_seconds: float = 0.0
) -> StudyPlan:
    """The study's pairs: each audio model against each text model, and each model with itself.

    A model already extracted into `store_url` is described from the store, without loading
    its adapter (and the libraries behind it)."""
    facts = {}
    for model in models:
        if store_url is not None and model_extracted(store_url, model, pack_seconds):
            group = group_name(model)
            modality = store.model_attrs(store_url, group).get("modality", "audio")
            facts[model] = modality, store.open_embedding(store_url, group).sizes["layer"]
        else:
            adapter = build_model(model)
            facts[model] = adapter.modality, len(adapter.layer_names)
    audio = [model for model in models if facts[model][0] == "audio"]
    text = [model for model in models if facts[model][0] != "audio"]
    # A single-layer model against itself is one trivial cell.
    layered = [model for model in models if facts[model][1] > 1]
    pairs = [(a, b) for a in audio for b in text] + [(model, model) for model in layered]
    return StudyPlan(tuple(models), tuple(pairs))


def model_extracted(store_url: str, model: str, pack_seconds: float) -> bool:
    """Whether every block of `model` is in the store, extracted with this context packing."""
    group = group_name(model)
    return (
        group in store.list_groups(store_url, "models")
        and not store.incomplete_blocks(store_url, group)
        and store.model_attrs(store_url, group).get("pack_seconds", 0.0) == pack_seconds
    )


def extraction_and_comparisons_done(
    store_url: str,
    plan: StudyPlan,
    *,
    metrics: Sequence[str] = STUDY_METRICS,
    pack_seconds: float = 0.0,
) -> bool:
    """Whether the store holds every extraction and comparison of `plan`: then no cluster is
    needed for them."""
    return all(model_extracted(store_url, m, pack_seconds) for m in plan.models) and all(
        _comparison_done(store_url, a, b, _pair_metrics(a, b, metrics)) for a, b in plan.pairs
    )


def _pair_metrics(a: str, b: str, metrics: Sequence[str]) -> list[str]:
    return [m for m in metrics if not (a == b and m == "asif")]


def _comparison_done(store_url: str, a: str, b: str, metrics: Sequence[str]) -> bool:
    existing = store.read_comparison(store_url, a, b)
    if existing is None:
        return False
    needed = {"asif": "asif_top1"}
    return all(needed.get(metric, metric) in existing.data_vars for metric in metrics)


def extract_and_compare(
    store_url: str,
    plan: StudyPlan,
    client: Client,
    *,
    metrics: Sequence[str] = STUDY_METRICS,
    asif_ks: Sequence[int] = (100, 250),
    asif_ps: Sequence[int] = (4, 6),
    seed: int = 0,
    pack_seconds: float = 0.0,
    gpu: bool = False,
    progress: bool = True,
) -> list[str]:
    """Extract, then compare; returns the printed log lines (one per step)."""
    log = []
    for model in plan.models:
        summary = extract_model(
            store_url,
            model,
            client=client,
            device=torch_device(gpu),
            pack_seconds=pack_seconds,
            progress=progress,
        )
        log.append(
            f"extract {model}: {summary.blocks_done} new block(s) of {summary.blocks_total}, "
            f"{summary.missing_words} word(s) NaN, {summary.seconds:.0f} s"
        )
        print(log[-1], flush=True)
    for a, b in plan.pairs:
        pair_metrics = _pair_metrics(a, b, metrics)
        if _comparison_done(store_url, a, b, pair_metrics):
            log.append(f"compare {a} × {b}: already in the store")
        else:
            compare_models(
                store_url, a, b, pair_metrics, seed=seed, gpu=gpu,
                **({"ks": tuple(asif_ks), "ps": tuple(asif_ps)} if "asif" in pair_metrics else {}),
            )  # fmt: skip
            log.append(f"compare {a} × {b}: {', '.join(pair_metrics)}")
        print(log[-1], flush=True)
    return log
