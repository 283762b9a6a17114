"""The `wordspace` command line: a thin layer over the pipeline's stages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from wordspace.errors import WordspaceError


def _index(args: argparse.Namespace) -> None:
    from wordspace.pipeline.index import index_corpus

    summary, written = index_corpus(args.corpus, args.alignments, args.store, strict=args.strict)
    for line in summary.lines():
        print(line)
    print(f"store: {args.store}" + ("" if written else " (already indexed, unchanged)"))


def _models(args: argparse.Namespace) -> None:
    from wordspace.pipeline.models.describe import describe_models

    for line in describe_models():
        print(line)


def _extract(args: argparse.Namespace) -> None:
    from wordspace.cluster import torch_device
    from wordspace.pipeline.extract import ExtractSettings, check_request, extract_model

    check_request(args.store, args.model, ExtractSettings(dtype=args.dtype, layers=args.layers))
    with _cluster(args, default_workers=1) as client:
        summary = extract_model(
            args.store,
            args.model,
            name=args.name,
            device=torch_device(args.gpu) if args.gpu else args.device,
            dtype=args.dtype,
            batch_seconds=args.batch_seconds,
            layers=args.layers,
            pack_seconds=args.pack_seconds,
            client=client,
        )
    for line in summary.lines():
        print(line)


def _align(args: argparse.Namespace) -> None:
    from wordspace.pipeline.align import align_corpus

    summary = align_corpus(args.corpus, args.out, workers=args.workers)
    for line in summary.lines():
        print(line)


def _align_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", type=Path, help="corpus folder with audio and .trans.txt files")
    parser.add_argument("--out", type=Path, required=True, help="folder for the TextGrids")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")


def _compare(args: argparse.Namespace) -> None:
    from wordspace.pipeline.compare import compare_models, format_grid, parse_metrics

    metrics = parse_metrics(args.metrics)
    options = {
        "layers_a": args.layers_a,
        "layers_b": args.layers_b,
        "sample": args.sample,
        "seed": args.seed,
        "ridge": args.ridge,
        "gpu": args.gpu,
    }
    if "asif" in metrics:
        options |= {
            "ks": _integers(args.k, "--k"),
            "ps": _integers(args.p, "--p"),
            "protocol": args.protocol,
        }
    with _cluster(args):
        results = compare_models(args.store, args.a, args.b, metrics, **options)
    print(f"{args.a} vs {args.b}: {results.attrs.get('n_words', '?')} words")
    for name in results.data_vars:
        grid = results[name]
        if name in ("asif_top1", "asif_top5"):
            grid = grid.max(("k", "p"))
            name = f"{name} (best over k, p)"
        if grid.dims == ("layer_a", "layer_b"):
            for line in format_grid(grid, f"{name} (rows: {args.a}, columns: {args.b})"):
                print(line)
    if "asif_top1" in results:
        print(
            f"ASIF best (k, p) overall: ({results.attrs['asif_best_k_overall']}, "
            f"{results.attrs['asif_best_p_overall']:g})"
        )
    print(f"stored in {args.store} at comparisons/{args.a}__{args.b}")


def _study(args: argparse.Namespace) -> None:
    from wordspace.pipeline.analyses import analyses_done
    from wordspace.pipeline.analyses import run_study as run_analyses
    from wordspace.pipeline.report import format_headlines, headlines, write_report
    from wordspace.pipeline.study import (
        extract_and_compare,
        extraction_and_comparisons_done,
        study_pairs,
    )

    models = [model.strip() for model in args.models.split(",") if model.strip()]
    plan = study_pairs(models, args.store, args.pack_seconds)
    if extraction_and_comparisons_done(
        args.store, plan, pack_seconds=args.pack_seconds
    ) and analyses_done(args.store, n_boot=args.n_boot):
        print("every extraction, comparison and analysis is in the store already")
    else:
        with _cluster(args) as client:
            extract_and_compare(
                args.store,
                plan,
                client,
                seed=args.seed,
                pack_seconds=args.pack_seconds,
                gpu=args.gpu,
            )
            run_analyses(args.store, n_boot=args.n_boot)
    page = write_report(args.store, args.out)
    print(format_headlines(headlines(args.store)))
    print(f"report: {page}")


def _integers(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise WordspaceError(f"{option} {text!r}: give integers like 100,250") from None


def _analyze(args: argparse.Namespace) -> None:
    from wordspace.pipeline.analyses import ANALYSES, plot_results, run_analysis

    skip = ("run", "command", "name", "store", "figures")
    options = {key: value for key, value in vars(args).items() if key not in skip}
    results = run_analysis(args.name, args.store, **options)
    print(ANALYSES[args.name].reading(results))
    if args.figures:
        for path in plot_results(args.name, results.attrs["key"], results, args.figures):
            print(f"figure: {path}")


# The analyses' names (tests check them against `ANALYSES`): parsing a command line then need not
# import the analyses, which takes about a second.
ANALYSIS_NAMES = (
    "layer_curves",
    "stability",
    "heatmaps",
    "asif",
    "retrieval_errors",
    "phonetic_semantic",
)


def _analyze_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=ANALYSIS_NAMES, help="the analysis")
    parser.add_argument("store", help="store path or URL")
    parser.add_argument("--a", help="model A (queries, the one whose layers are swept)")
    parser.add_argument("--b", help="model B (the text model for errors and phonetic_semantic)")
    parser.add_argument("--layer-b", help="layer of B for curves and stability (default: last)")
    parser.add_argument("--models", type=_names, help="comma-separated audio models")
    parser.add_argument("--metrics", type=_names, help="comma-separated metrics")
    parser.add_argument("--metric", help="the metric for stability (default cka)")
    parser.add_argument("--n-boot", type=int, help="bootstrap resamples (default 50)")
    parser.add_argument("--sizes", type=lambda text: [int(v) for v in _names(text)])
    parser.add_argument("--n-seeds", type=int, help="subsamples per size (default 5)")
    parser.add_argument("--k", type=int, help="ASIF k (default 250)")
    parser.add_argument("--p", type=float, help="ASIF p (default 4)")
    parser.add_argument("--query-share", type=float, help="held-out ASIF queries (default 0.15)")
    parser.add_argument("--n-pairs", type=int, help="word pairs sampled (default 20000)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--figures", type=Path, help="also write PNG and SVG figures here")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _report(args: argparse.Namespace) -> None:
    from wordspace.pipeline.report import write_report

    print(f"report: {write_report(args.store, args.out)}")


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="store path or URL")
    parser.add_argument("--out", type=Path, required=True, help="folder for the page and figures")


Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable]


def _index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", type=Path, help="corpus folder (LibriSpeech layout or flat)")
    parser.add_argument(
        "--alignments", type=Path, help="folder of TextGrids (default: beside the audio)"
    )
    parser.add_argument("--store", required=True, help="store path or fsspec URL to create")
    parser.add_argument(
        "--strict", action="store_true", help="stop at a TextGrid that disagrees with a transcript"
    )


def _extract_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="store path or URL (made by `wordspace index`)")
    parser.add_argument("--model", required=True, help="model name (see `wordspace models`)")
    parser.add_argument("--name", help="store group name (default: the model name)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument(
        "--batch-seconds", type=float, default=60.0, help="audio seconds per forward batch"
    )
    parser.add_argument("--layers", help="comma-separated layer indices to keep (default: all)")
    _packing_argument(parser)
    _cluster_arguments(parser)


def _packing_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pack-seconds",
        type=float,
        default=0.0,
        help="audio models see runs of consecutive utterances of one reading up to this long "
        "(30 suits Whisper's 30 s windows; default 0: each utterance alone)",
    )


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheduler",
        help="Dask scheduler address (default: DASK_SCHEDULER_ADDRESS, else a local cluster)",
    )
    parser.add_argument(
        "--scheduler-file", help="scheduler file written by `dask scheduler --scheduler-file`"
    )
    parser.add_argument("--workers", type=int, help="workers of the local cluster")
    parser.add_argument(
        "--memory-limit", help="memory limit per local worker, e.g. 4GB (default: an equal share)"
    )
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="compute on GPUs: one local worker per GPU, cupy blocks, models on CUDA",
    )


def _cluster(args: argparse.Namespace, default_workers: int | None = None):
    """The Dask client the cluster options ask for (a context manager)."""
    from wordspace.cluster import dask_client, visible_gpus

    return dask_client(
        args.scheduler,
        scheduler_file=args.scheduler_file,
        workers=args.workers or default_workers,
        memory_limit=args.memory_limit,
        gpus=visible_gpus() if args.gpu else None,
    )


def _cluster_recipes(args: argparse.Namespace) -> None:
    from wordspace.cluster import cluster_recipes

    print(cluster_recipes(args.kind))


def _cluster_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "kind", nargs="?", choices=["hosts", "slurm", "kubernetes"], help="one recipe (default all)"
    )


def _compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="store path or URL")
    parser.add_argument("--a", required=True, help="first model (rows of the grids)")
    parser.add_argument("--b", required=True, help="second model (columns; may equal --a)")
    parser.add_argument(
        "--metrics",
        default="cka,cka_debiased,cca",
        help="comma-separated: cka,cka_debiased,cca,asif",
    )
    parser.add_argument("--layers-a", help="layers of --a to compare (indices or names)")
    parser.add_argument("--layers-b", help="layers of --b to compare (indices or names)")
    parser.add_argument("--sample", type=int, help="use a random sample of N words")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample and ASIF queries")
    parser.add_argument("--ridge", type=float, default=0.0, help="CCA ridge in [0, 1]")
    parser.add_argument("--k", default="100,250", help="ASIF k values (non-zeros kept)")
    parser.add_argument("--p", default="4,6", help="ASIF p values (exponents)")
    parser.add_argument(
        "--protocol", default="study", choices=["study", "paired"], help="ASIF protocol"
    )
    _cluster_arguments(parser)


DEMO_MODELS = "logmel,mfcc,whisper-tiny.en,whisper-base,minilm-l6,mpnet-base,glove-6b-50d"


def _study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="store path or URL (made by `wordspace index`)")
    parser.add_argument(
        "--models", default=DEMO_MODELS, help=f"comma-separated models (default: {DEMO_MODELS})"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the ASIF query split")
    _packing_argument(parser)
    parser.add_argument("--out", required=True, help="folder for the HTML report and figures")
    parser.add_argument(
        "--n-boot", type=int, default=50, help="bootstrap resamples of the layer curves"
    )
    _cluster_arguments(parser)


COMMANDS: list[Command] = [
    ("index", "index a corpus's word alignments into a new store", _index_arguments, _index),
    ("align", "force-align a corpus with pocketsphinx into TextGrids", _align_arguments, _align),
    ("models", "list the models wordspace can extract", lambda parser: None, _models),
    (
        "extract",
        "extract every layer of a model for every word token",
        _extract_arguments,
        _extract,
    ),
    ("compare", "compare two extracted models layer by layer", _compare_arguments, _compare),
    (
        "study",
        "the whole study: extract, compare the study's pairs, analyse, write the report",
        _study_arguments,
        _study,
    ),
    (
        "cluster",
        "print recipes for running on a Dask cluster (SLURM, Kubernetes, hosts)",
        _cluster_recipe_arguments,
        _cluster_recipes,
    ),
    ("analyze", "run one of the study's analyses on a store", _analyze_arguments, _analyze),
    ("report", "write the HTML report of a store's results", _report_arguments, _report),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wordspace",
        description="Layer-by-layer similarity of word representations of speech, audio and "
        "text models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add_arguments, run in COMMANDS:
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(subparser)
        subparser.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors print one line and exit 2, an interrupt exits 130."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except WordspaceError as error:
        print(f"wordspace: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wordspace: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
