"""Extraction engine overhead and throughput, per model, on the demo corpus.

For each model, the model is loaded once (as a worker does), forward hooks time every call of its
torch modules, and the whole extraction runs through the engine on an in-process Dask cluster.
Printed per model: load time, whole extraction time, pure forward time measured inside that same
run, the engine's overhead (reading audio, features, batching, pooling, writing) as a share of the
forward time, and audio seconds per second. Goals: MiniLM overhead at most 15 %; every model of
issue 4 together under 3 minutes.

    python benchmarks/bench_extract.py [--models minilm-l6,mpnet-base,...] [--store DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from distributed import Client, LocalCluster

from wordspace.pipeline import extract
from wordspace.pipeline.index import index_corpus

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
    print(f"torch threads: {torch.get_num_threads()}")
    header = (
        f"{'model':<16} {'load s':>7} {'extract s':>9} {'forward s':>9} {'overhead':>9} "
        f"{'audio s/s':>9}"
    )
    print(header)
    total = 0.0
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
    ):
        for spec in args.models.split(","):
            began = time.perf_counter()
            adapter = extract._loaded_adapter(spec, "cpu", "float32")
            loaded = time.perf_counter() - began
            timer = ForwardTimer(adapter)
            result = extract.extract_model(url, spec, client=client, progress=False)
            has_forward = timer.seconds > 0
            overhead = (
                f"{(result.seconds - timer.seconds) / timer.seconds:>8.0%}"
                if has_forward
                else f"{'no nn':>8}"
            )
            rate = result.audio_hours * 3600 / result.seconds
            print(
                f"{spec:<16} {loaded:>7.1f} {result.seconds:>9.1f} {timer.seconds:>9.1f} "
                f"{overhead:>9} {rate:>9.0f}",
                flush=True,
            )
            total += loaded + result.seconds
    print(f"all models, load + extraction: {total:.1f} s (goal for issue 4's models: < 180 s)")
    if not args.store:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
