"""Extraction engine overhead and throughput, per model, on the demo corpus.

The extraction runs as `wordspace extract` runs it here: on the local cluster it starts (one worker
process). For each model, the worker loads the model and the client its code and configuration
first (timed apart, as "load"), forward hooks installed on the worker time every call of its torch
modules, and then the whole extraction runs through the engine, ``--repeats`` times (each run into
a model group of its own, so each computes and writes everything). Printed per run: whole
extraction time, pure forward time measured inside that same run, the engine's overhead (reading
audio, features, batching, pooling, writing, planning, scheduling) as a share of the forward time,
and audio seconds per second; the summary line per model gives the median of each column and of
the runs' own overheads (each run's extraction against the forward measured inside it). After each
run the worker also writes the same number of bytes as plain files (one per stored chunk) into a
new folder beside the store: what the machine alone charges for writing that much, as a share of
the forward.
Goals: MiniLM overhead at most 15 %; every model of issue 4 together under 3 minutes.

    python benchmarks/bench_extract.py [--models minilm-l6,mpnet-base,...] [--repeats N]
        [--store DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

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


def plain_write_seconds(folder: str, n_bytes: int, file_bytes: int) -> float:
    """On the worker: seconds to write `n_bytes` as new files of `file_bytes` into `folder`."""
    payload = memoryview(os.urandom(file_bytes))
    os.makedirs(folder)
    began = time.perf_counter()
    for index in range(-(-n_bytes // file_bytes)):
        with open(os.path.join(folder, str(index)), "wb") as file:
            file.write(payload[: min(file_bytes, n_bytes - index * file_bytes)])
    seconds = time.perf_counter() - began
    shutil.rmtree(folder)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=ENGINE_MODELS)
    parser.add_argument("--store", default=None, help="where to write the store (a temp dir)")
    parser.add_argument("--repeats", type=int, default=1, help="extractions per model")
    args = parser.parse_args()
    workdir = Path(args.store or tempfile.mkdtemp(prefix="wordspace-bench-"))
    url = str(workdir / "demo.zarr")
    shutil.rmtree(url, ignore_errors=True)
    summary, _ = index_corpus(DEMO / "corpus", DEMO / "alignments", url)
    print(f"demo corpus: {summary.word_tokens} words, {summary.utterances} utterances")
    print(
        f"{'model':<16} {'run':>3} {'load s':>7} {'extract s':>9} {'forward s':>9} "
        f"{'overhead':>9} {'audio s/s':>9} {'plain write':>12}"
    )
    total = 0.0
    with dask_client(workers=1, quiet=True) as client:  # what `wordspace extract` starts
        for spec in args.models.split(","):
            began = time.perf_counter()
            client.run(load_with_timer, spec)
            build_model(spec)  # the client's side of loading: the model's code, its config
            loaded = time.perf_counter() - began
            runs = []
            for run in range(args.repeats):
                (forward_before,) = client.run(forward_seconds, spec).values()
                result = extract.extract_model(
                    url, spec, name=f"{spec}-run{run}", client=client, progress=False
                )
                (forward_after,) = client.run(forward_seconds, spec).values()
                forward = forward_after - forward_before
                stored = xr.open_zarr(url, group=f"models/{spec}-run{run}", consolidated=False)[
                    "embedding"
                ]
                chunk_bytes = int(np.prod(stored.encoding["chunks"])) * stored.dtype.itemsize
                (writing,) = client.run(
                    plain_write_seconds, str(workdir / f"plain-{run}"), stored.nbytes, chunk_bytes
                ).values()
                runs.append((result.seconds, forward, writing))
                overhead = share(result.seconds - forward, forward)
                print(
                    f"{spec:<16} {run:>3} {loaded if run == 0 else 0.0:>7.1f} "
                    f"{result.seconds:>9.2f} {forward:>9.2f} {overhead:>9} "
                    f"{result.audio_hours * 3600 / result.seconds:>9.0f} "
                    f"{writing:>6.2f} s {share(writing, forward):>4}",
                    flush=True,
                )
            columns = zip(*runs, strict=True)
            seconds, forward, writing = (statistics.median(column) for column in columns)
            overheads = [(run[0] - run[1]) / run[1] for run in runs if run[1] > 0]
            overhead = f"{statistics.median(overheads):.0%}" if overheads else "no nn"
            print(
                f"{spec:<16} median of {args.repeats}: extract {seconds:.2f} s, forward "
                f"{forward:.2f} s, overhead {overhead} (median of the runs' own); plain writing "
                f"of its {stored.nbytes / 1e6:.0f} MB {writing:.2f} s",
                flush=True,
            )
            total += loaded + runs[0][0]
        threads = list(client.run(torch.get_num_threads).values())
    print(f"torch threads on the worker: {threads}")
    print(
        f"all models, load + first extraction: {total:.1f} s (goal for issue 4's models: < 180 s)"
    )
    if not args.store:
        shutil.rmtree(workdir, ignore_errors=True)


def share(part: float, whole: float) -> str:
    return f"{part / whole:.0%}" if whole > 0 else "no nn"


if __name__ == "__main__":
    main()
