"""The extract stage: one model, every layer, one vector per word token, written block by block.

The store's word axis is cut into blocks (the unit of a Dask task, of a region write and of a
completion mark). A task embeds every utterance that has words in its block (whole utterances,
so text models see their full context), keeps the block's rows and writes them. A rerun after an
interruption does only the blocks not marked complete, so its result equals an uninterrupted run.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import torch
from dask.system import CPU_COUNT
from distributed import Client, Worker, WorkerPlugin, as_completed
from distributed.comm.addressing import get_address_host
from tqdm import tqdm

import wordspace
from wordspace.cluster import dask_client
from wordspace.errors import WordspaceError
from wordspace.pipeline.audio import load_audio
from wordspace.pipeline.models.base import ModelAdapter, Utterance
from wordspace.pipeline.models.cache import file_sha256
from wordspace.pipeline.models.devices import torch_device
from wordspace.pipeline.models.registry import build_model
from wordspace.pipeline.writer import finish_writes, write_behind
from wordspace.storage import store

_LOADED: dict[tuple[str, str, str], ModelAdapter] = {}
_PACKAGES = ("numpy", "torch", "transformers", "zarr", "xarray", "dask")
_BLOCK_ATTEMPTS = 3


def group_name(model: str) -> str:
    """The store group a model spec is written to: registered names as they are, paths slugged."""
    if re.fullmatch(r"[A-Za-z0-9._-]+", model):
        return model
    prefix, _, path = model.partition(":")
    return f"{prefix}-{Path(path).name}" if path else re.sub(r"[^A-Za-z0-9._-]+", "-", model)


def _checkpoint_hash(path: str | None) -> str | None:
    return file_sha256(Path(path)) if path and Path(path).is_file() else None


def provenance(adapter: ModelAdapter, spec: str, device: str, dtype: str) -> dict[str, Any]:
    """What produced an embedding: model, weights, geometry, pooling, software, date."""
    versions = {}
    for package in _PACKAGES:
        # An imported package's own __version__ is free; metadata.version parses files.
        version = getattr(sys.modules.get(package), "__version__", None)
        try:
            versions[package] = version or metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    geometry = adapter.geometry
    return {
        "model": spec,
        "model_name": adapter.name,
        "modality": adapter.modality,
        "source": adapter.source,
        "checkpoint_path": adapter.checkpoint_path,
        "checkpoint_sha256": _checkpoint_hash(adapter.checkpoint_path),
        "sample_rate": geometry.sample_rate if geometry else None,
        "frame_hop_samples": geometry.hop if geometry else None,
        "frame_window_samples": geometry.window if geometry else None,
        "frame_offset_samples": geometry.offset if geometry else None,
        "frame_rate": geometry.frame_rate if geometry else None,
        "pooling": adapter.pooling,
        "dtype": dtype,
        "device": device,
        "wordspace_version": wordspace.__version__,
        "package_versions": versions,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


@dataclass(frozen=True)
class BlockPlan:
    """Everything a worker needs to embed one block, without opening the word table itself."""

    store_url: str
    group: str
    spec: str
    device: str
    dtype: str
    block: int
    word_start: int
    word_stop: int
    layers: tuple[int, ...]
    n_layers: int
    dim: int
    batch_seconds: float
    pack_seconds: float
    corpus_root: str
    utterances: list[dict[str, Any]] = field(default_factory=list)


def _loaded_adapter(spec: str, device: str, dtype: str) -> ModelAdapter:
    """The worker's copy of the model, loaded on first use and kept for later tasks."""
    key = (spec, device, dtype)
    if key not in _LOADED:
        adapter = build_model(spec)
        adapter.load(device=device, dtype=dtype)
        _LOADED[key] = adapter
    return _LOADED[key]


def _units(utterances: list[dict[str, Any]], pack_seconds: float) -> list[list[dict]]:
    """Runs of consecutive utterances of one reading (speaker and chapter), each run at most
    `pack_seconds` long; every utterance alone when `pack_seconds` is 0."""
    units: list[list[dict]] = []
    for utterance in utterances:
        last = units[-1] if units else None
        if (
            pack_seconds > 0
            and last is not None
            and last[-1]["reading"] == utterance["reading"]
            and sum(item["duration"] for item in last) + utterance["duration"] <= pack_seconds
        ):
            last.append(utterance)
        else:
            units.append([utterance])
    return units


def _batches(units: list[list[dict]], batch_seconds: float) -> list[list[list[dict]]]:
    """Units of similar length together, each batch at most `batch_seconds` of audio."""
    ordered = sorted(units, key=lambda unit: sum(item["duration"] for item in unit))
    batches: list[list[list[dict]]] = [[]]
    total = 0.0
    for unit in ordered:
        duration = sum(item["duration"] for item in unit)
        if batches[-1] and total + duration > batch_seconds:
            batches.append([])
            total = 0.0
        batches[-1].append(unit)
        total += duration
    return [batch for batch in batches if batch]


def _unit_input(unit: list[dict], adapter: ModelAdapter, corpus_root: str) -> Utterance:
    """One model input from a run of utterances: audio concatenated, word times shifted."""
    waveforms, starts, ends = [], [], []
    offset = 0.0
    for utterance in unit:
        duration = utterance["duration"]
        if adapter.modality == "audio":
            assert adapter.geometry is not None
            waveform, rate = load_audio(
                Path(corpus_root) / utterance["audio_path"], adapter.geometry.sample_rate
            )
            waveforms.append(waveform)
            duration = len(waveform) / rate
        starts.append(np.asarray(utterance["starts"]) + offset)
        ends.append(np.asarray(utterance["ends"]) + offset)
        offset += duration
    return Utterance(
        id="+".join(utterance["id"] for utterance in unit),
        words=[word for utterance in unit for word in utterance["words"]],
        starts=np.concatenate(starts),
        ends=np.concatenate(ends),
        transcript=" ".join(utterance["transcript"] for utterance in unit),
        waveform=np.concatenate(waveforms) if waveforms else None,
    )


def _embed_batch(adapter: ModelAdapter, batch: list[list[dict]], plan: BlockPlan) -> np.ndarray:
    """The words of a batch's units, which it puts in word order: (layers, words, dim)."""
    batch.sort(key=lambda unit: unit[0]["first_word"])
    inputs = [_unit_input(unit, adapter, plan.corpus_root) for unit in batch]
    vectors = adapter.embed_words(inputs)
    expected = (plan.n_layers, sum(len(unit_input.words) for unit_input in inputs), plan.dim)
    if vectors.shape != expected:
        raise RuntimeError(
            f"{plan.spec} returned {vectors.shape} for the batch of {inputs[0].id},"
            f" expected {expected}"
        )
    return vectors


def embed_block(plan: BlockPlan) -> tuple[int, float]:
    """Embed one block and hand it to this worker's writer; returns (utterances, audio seconds).
    The words it leaves NaN are counted with its completion mark, when it is written."""
    adapter = _loaded_adapter(plan.spec, plan.device, plan.dtype)
    audio = adapter.modality == "audio"
    pack_seconds = plan.pack_seconds if audio else 0.0
    # Text and static models batch by their own token budget: give them the whole block at once.
    batch_seconds = plan.batch_seconds if audio else math.inf
    # A slice when every layer is kept: basic indexing copies once, a list of layers twice.
    layers = slice(None) if plan.layers == tuple(range(plan.n_layers)) else list(plan.layers)
    batches = _batches(_units(plan.utterances, pack_seconds), batch_seconds)
    if len(batches) == 1:
        # The block's utterances in order: its words are a slice of the adapter's array.
        vectors = _embed_batch(adapter, batches[0], plan)
        first = plan.utterances[0]["first_word"]
        values = vectors[layers, plan.word_start - first : plan.word_stop - first]
    else:
        values = np.full(
            (len(plan.layers), plan.word_stop - plan.word_start, plan.dim), np.nan, np.float32
        )
        for batch in batches:
            vectors = _embed_batch(adapter, batch, plan)
            row = 0
            for unit in batch:
                first, count = unit[0]["first_word"], sum(len(item["words"]) for item in unit)
                keep_from = max(plan.word_start, first)
                keep_to = min(plan.word_stop, first + count)
                values[:, keep_from - plan.word_start : keep_to - plan.word_start] = vectors[
                    layers, row + keep_from - first : row + keep_to - first
                ]
                row += count
    write_behind(plan.store_url, plan.group, plan.block, values)
    seconds = sum(utterance["duration"] for utterance in plan.utterances)
    return len(plan.utterances), seconds


@dataclass
class ExtractSummary:
    group: str
    words: int
    blocks_done: int
    blocks_total: int
    utterances: int
    audio_hours: float
    missing_words: int
    missing_sample: list[str]
    seconds: float

    def lines(self) -> list[str]:
        return [
            f"model group: models/{self.group}",
            f"word tokens: {self.words} in {self.blocks_total} blocks "
            f"({self.blocks_done} computed now, the rest already complete)",
            f"utterances embedded: {self.utterances} ({self.audio_hours * 3600:.1f} s of audio; "
            "an utterance across two blocks counts twice)",
            f"words the model cannot represent (NaN): {self.missing_words}"
            + (f", e.g. {', '.join(self.missing_sample[:10])}" if self.missing_sample else ""),
            f"time: {self.seconds:.1f} s",
        ]


def _parse_layers(layers: str | None, n_layers: int) -> tuple[int, ...]:
    if not layers:
        return tuple(range(n_layers))
    try:
        chosen = tuple(int(part) for part in layers.split(","))
    except ValueError:
        raise WordspaceError(f"--layers {layers!r}: give layer indices like 0,6,12") from None
    outside = [index for index in chosen if not 0 <= index < n_layers]
    if outside:
        raise WordspaceError(
            f"--layers {layers}: layer {outside[0]} is out of range; the model has layers "
            f"0 to {n_layers - 1}"
        )
    return chosen


@dataclass(frozen=True)
class ExtractSettings:
    """How a model is extracted (the `wordspace extract` options)."""

    name: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    batch_seconds: float = 60.0
    layers: str | None = None
    block_words: int | None = None
    pack_seconds: float = 0.0


def check_request(
    store_url: str, spec: str, settings: ExtractSettings
) -> tuple[ModelAdapter, tuple[int, ...]]:
    """The model's adapter and the layers to keep, once the dtype, the store, the model and the
    layers are checked: everything a user can get wrong, before a cluster starts or a write."""
    _check_dtype(settings)
    store.root_attrs(store_url)  # a clear error when there is no word table
    return _model_and_layers(spec, settings)


def _check_dtype(settings: ExtractSettings) -> None:
    if settings.dtype not in ("float32", "float16"):
        raise WordspaceError(f"--dtype {settings.dtype!r}: use float32 or float16")


def _model_and_layers(spec: str, settings: ExtractSettings) -> tuple[ModelAdapter, tuple[int, ...]]:
    adapter = build_model(spec)
    return adapter, _parse_layers(settings.layers, len(adapter.layer_names))


# Word-table columns that plans are made of (words' first, then utterances').
_PLAN_COLUMNS = [
    *("text", "start", "end", "utterance_index", "speaker", "chapter"),
    *("utterance_id", "audio_path", "duration", "transcript"),
]


def plan_blocks(
    store_url: str,
    spec: str,
    settings: ExtractSettings,
    before_writing: Callable[[], object] = lambda: None,
) -> tuple[str, list[BlockPlan], int]:
    """Create (or reopen) the model group and plan its unfinished blocks: (group, plans, words).

    `before_writing` runs once the request is checked and the word table read, before the group
    is created (a check still running elsewhere, whose failure must leave the store unchanged).
    """
    _check_dtype(settings)
    root, columns = store.read_word_columns(store_url, _PLAN_COLUMNS)
    adapter, chosen = _model_and_layers(spec, settings)
    before_writing()
    group = settings.name or group_name(spec)
    n_words = len(columns["text"])
    block_words = settings.block_words or store.words_per_block(n_words)
    created = store.create_embedding(
        store_url,
        group,
        layer_names=[adapter.layer_names[index] for index in chosen],
        n_words=n_words,
        dim=adapter.dim,
        dtype=settings.dtype,
        block_words=block_words,
        attrs={
            **provenance(adapter, spec, settings.device, settings.dtype),
            "layer_indices": list(chosen),
            "pack_seconds": settings.pack_seconds,
        },
    )
    if created:
        todo = list(range(-(-n_words // block_words)))
    else:
        stored_packing = store.model_attrs(store_url, group).get("pack_seconds", 0.0)
        if stored_packing != settings.pack_seconds:
            raise WordspaceError(
                f"{store_url}: models/{group} was extracted with --pack-seconds {stored_packing}; "
                "resume with the same value or pass --name to store this run separately"
            )
        todo = store.incomplete_blocks(store_url, group)
    if not todo:
        return group, [], n_words
    boundaries = np.flatnonzero(np.diff(columns["utterance_index"])) + 1
    utterance_first = np.concatenate([[0], boundaries])
    utterance_stop = np.concatenate([boundaries, [n_words]])
    plans = []
    for block in todo:
        start, stop = block * block_words, min((block + 1) * block_words, n_words)
        first_utt = np.searchsorted(utterance_stop, start, side="right")
        last_utt = np.searchsorted(utterance_first, stop, side="left")
        utterances = []
        for row in range(first_utt, last_utt):
            first, end = int(utterance_first[row]), int(utterance_stop[row])
            index = int(columns["utterance_index"][first])
            utterances.append(
                {
                    "id": str(columns["utterance_id"][index]),
                    "audio_path": str(columns["audio_path"][index]),
                    "duration": float(columns["duration"][index]),
                    "transcript": str(columns["transcript"][index]),
                    "words": [str(word) for word in columns["text"][first:end]],
                    # Lists, not arrays: Dask sends each array in a task's arguments as a
                    # frame of its own, which for a block's hundreds of utterances delayed
                    # every task's start by ~5 ms.
                    "starts": columns["start"][first:end].astype(np.float64).tolist(),
                    "ends": columns["end"][first:end].astype(np.float64).tolist(),
                    "first_word": first,
                    "reading": f"{columns['speaker'][first]}/{columns['chapter'][first]}",
                }
            )
        plans.append(
            BlockPlan(
                store_url=store_url,
                group=group,
                spec=spec,
                device=settings.device,
                dtype=settings.dtype,
                block=block,
                word_start=start,
                word_stop=stop,
                layers=chosen,
                n_layers=len(adapter.layer_names),
                dim=adapter.dim,
                batch_seconds=settings.batch_seconds,
                pack_seconds=settings.pack_seconds,
                corpus_root=root["corpus_root"],
                utterances=utterances,
            )
        )
    return group, plans, n_words


def _finish(store_url: str, group: str, missing_per_block: np.ndarray) -> tuple[int, list[str]]:
    """Count the words left NaN and keep a sample of them in the group's attributes."""
    missing = int(missing_per_block.sum())
    sample: list[str] = []
    if missing:
        embedding = store.open_embedding(store_url, group)
        with dask.config.set(scheduler="threads"):  # local reads, not a cluster round trip
            missing_mask = da.isnan(embedding.data[0, :, 0]).compute()
            texts = embedding["text"].values[missing_mask]
        sample = list(dict.fromkeys(str(text) for text in texts))[:20]
    store.update_model_attrs(
        store_url,
        group,
        {"n_missing_words": missing, "missing_words_sample": sample, "complete": True},
    )
    return missing, sample


class TorchThreads(WorkerPlugin):
    """Gives torch on every worker its share of its host's cores, on the workers there are now
    and on any that join or restart later.

    Dask's nanny starts worker processes with ``OMP_NUM_THREADS=1``, so without this torch runs
    each model on one core however many the host has (MiniLM on the demo: 3.5 s of forward on
    one of this machine's two cores, 2.0 s on both).
    """

    name = "wordspace-torch-threads"

    def __init__(self, workers_per_host: dict[str, int]) -> None:
        self.workers_per_host = workers_per_host

    def setup(self, worker: Worker) -> None:
        siblings = self.workers_per_host.get(get_address_host(worker.address), 1)
        torch.set_num_threads(max(1, CPU_COUNT // siblings // max(1, worker.state.nthreads)))


def share_cores_with_torch(client: Client) -> None:
    """Register `TorchThreads` for the client's workers, counted per host."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    client.register_plugin(TorchThreads(dict(Counter(info["host"] for info in workers))))


def run_plans(
    plans: list[BlockPlan], client: Client, progress: bool = True
) -> tuple[int, float, np.ndarray]:
    """Run block plans on the cluster with a progress bar; (utterances, audio seconds) done and,
    from the stored marks, the words each block of the group left NaN.

    A block is done when its completion mark is stored, not when its task ends (each worker
    writes a block while it embeds the next: see `writer`). Blocks left unmarked, because their
    write failed or their worker was lost with the write in flight, run again, up to
    `_BLOCK_ATTEMPTS` times in all.
    """
    done_utterances, done_seconds = 0, 0.0
    total_utterances = sum(len(plan.utterances) for plan in plans)
    store_url, group = plans[0].store_url, plans[0].group
    with tqdm(
        total=total_utterances, unit="utt", disable=not progress, desc="extract", smoothing=0
    ) as bar:
        for _ in range(_BLOCK_ATTEMPTS):
            futures = [client.submit(embed_block, plan, pure=False, retries=2) for plan in plans]
            for future in as_completed(futures):
                utterances, seconds = future.result()
                done_utterances += utterances
                done_seconds += seconds
                bar.update(utterances)
                bar.set_postfix_str(f"{done_seconds / 3600:.3f} h audio")
            errors = [error for errors in client.run(finish_writes).values() for error in errors]
            complete, missing_per_block = store.block_marks(store_url, group)
            plans = [plan for plan in plans if not complete[plan.block]]
            if not plans:
                return done_utterances, done_seconds, missing_per_block
    cause = errors[0] if errors else "their worker was lost each time"
    raise WordspaceError(
        f"{store_url}: models/{group}: {len(plans)} block(s) not written after "
        f"{_BLOCK_ATTEMPTS} attempts ({cause}); the rest is stored: run the same command again"
        " to do those blocks"
    )


def extract_model(
    store_url: str,
    spec: str,
    *,
    name: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    batch_seconds: float = 60.0,
    layers: str | None = None,
    block_words: int | None = None,
    pack_seconds: float = 0.0,
    client: Client | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> ExtractSummary:
    """Extract every (or the chosen) layer of `spec` for every word token of the store.

    `pack_seconds` > 0 feeds an audio model runs of consecutive utterances of one reading (same
    speaker and chapter) of up to that many seconds instead of each utterance alone: Whisper,
    which always encodes 30 s windows, then does the work of one window per 30 s of speech
    rather than one per utterance; the words of an utterance see its neighbours as context.
    """
    began = time.perf_counter()
    with ExitStack() as stack:
        if client is None:
            client = stack.enter_context(
                dask_client(scheduler, workers=workers, quiet=not progress)
            )
        # Checked where the work runs (the client's machine may have no GPU while workers do),
        # while the client reads the word table.
        device_checked = client.submit(torch_device, device, pure=False)
        share_cores_with_torch(client)
        settings = ExtractSettings(
            name, device, dtype, batch_seconds, layers, block_words, pack_seconds
        )
        group, plans, n_words = plan_blocks(store_url, spec, settings, device_checked.result)
        if plans:
            utterances, seconds, missing_per_block = run_plans(plans, client, progress)
        else:
            utterances, seconds = 0, 0.0
            _, missing_per_block = store.block_marks(store_url, group)
    missing, sample = _finish(store_url, group, missing_per_block)
    return ExtractSummary(
        group=group,
        words=n_words,
        blocks_done=len(plans),
        blocks_total=len(missing_per_block),
        utterances=utterances,
        audio_hours=seconds / 3600,
        missing_words=missing,
        missing_sample=sample,
        seconds=time.perf_counter() - began,
    )
