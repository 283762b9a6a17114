"""Extraction engine overhead and throughput, per model, on the demo corpus.

The extraction runs as `wordspace extract` runs it here: on the local cluster it starts (one worker
process). For each model, the worker loads the model and the client its code and configuration
first (timed apart, as "load"), forward hooks installed on the worker time every call of its torch
modules, and then the whole extraction runs through the engine. Printed per model: load time, whole
extraction time, pure forward time measured inside that same run, the engine's overhead (reading
audio, features, batching, pooling, writing, planning, scheduling) as a share of the forward time,
and audio seconds per second.
Goals: MiniLM overhead at most 15 %; every model of issue 4 together under 3 minutes.

    python benchmarks/bench_extract.py [--models minilm-l6,mpnet-base,...] [--store DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from wordspace.cluster import dask_client
from wordspace.pipeline import extract
from wordspace.pipeline.index import index_corpus
from wordspace.pipeline.models.registry import build_model

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
ENGINE_MODELS = "minilm-l6,mpnet-base,glove-6b-50d,logmel,mfcc"


class ForwardTimer:
    """Adds up the wall time spent inside the outermost torch modules of an adapter."""

    def __init__(self, adapter: object) -> None:
        self.seconds = 0.0
        self._started: dict[int, float] = {}
        for value in vars(adapter).values():
            if isinstance(value, torch.nn.Module):
                value.register_forward_pre_hook(self._before)
                value.register_forward_hook(self._after)

    def _before(self, module, inputs) -> None:
        self._started[id(module)] = time.perf_counter()

    def _after(self, module, inputs, output) -> None:
        self.seconds += time.perf_counter() - self._started.pop(id(module))


def load_with_timer(spec: str) -> None:
    """On the worker: load the model and hook a forward timer onto it."""
    adapter = extract._loaded_adapter(spec, "cpu", "float32")
    adapter.forward_timer = ForwardTimer(adapter)


def forward_seconds(spec: str) -> float:
    """On the worker: the forward time added up since the model was loaded."""
    return extract._loaded_adapter(spec, "cpu", "float32").forward_timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=ENGINE_MODELS)
    parser.add_argument("--store", default=None, help="where to write the store (a temp dir)")
    args = parser.parse_args()
    workdir = Path(args.store or tempfile.mkdtemp(prefix="wordspace-bench-"))
    url = str(workdir / "demo.zarr")
    shutil.rmtree(url, ignore_errors=True)
    summary, _ = index_corpus(DEMO / "corpus", DEMO / "alignments", url)
    print(f"demo corpus: {summary.word_tokens} words, {summary.utterances} utterances")
    header = (
        f"{'model':<16} {'load s':>7} {'extract s':>9} {'forward s':>9} {'overhead':>9} "
        f"{'audio s/s':>9}"
    )
    print(header)
    total = 0.0
    with dask_client(workers=1, quiet=True) as client:  # what `wordspace extract` starts
        for spec in args.models.split(","):
            began = time.perf_counter()
            client.run(load_with_timer, spec)
            build_model(spec)  # the client's side of loading: the model's code, its config
            loaded = time.perf_counter() - began
            result = extract.extract_model(url, spec, client=client, progress=False)
            (forward,) = client.run(forward_seconds, spec).values()
            overhead = (
                f"{(result.seconds - forward) / forward:>8.0%}" if forward > 0 else f"{'no nn':>8}"
            )
            rate = result.audio_hours * 3600 / result.seconds
            print(
                f"{spec:<16} {loaded:>7.1f} {result.seconds:>9.1f} {forward:>9.1f} "
                f"{overhead:>9} {rate:>9.0f}",
                flush=True,
            )
            total += loaded + result.seconds
        threads = list(client.run(torch.get_num_threads).values())
    print(f"torch threads on the worker: {threads}")
    print(f"all models, load + extraction: {total:.1f} s (goal for issue 4's models: < 180 s)")
    if not args.store:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
