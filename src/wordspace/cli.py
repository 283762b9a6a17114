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
    from wordspace.pipeline.extract import extract_model

    summary = extract_model(
        args.store,
        args.model,
        name=args.name,
        device=args.device,
        dtype=args.dtype,
        batch_seconds=args.batch_seconds,
        layers=args.layers,
        scheduler=args.scheduler,
        workers=args.workers,
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
    _cluster_arguments(parser)


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scheduler", help="Dask scheduler address (default: a local cluster)")
    parser.add_argument("--workers", type=int, help="workers of the local cluster")


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
