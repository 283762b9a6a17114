"""The index stage: corpus + alignments -> the store's word table."""

from __future__ import annotations

from pathlib import Path

from wordspace.pipeline.corpus import IndexSummary, build_word_table
from wordspace.storage import store


def index_corpus(
    corpus: Path, alignments: Path | None, store_url: str, *, strict: bool = False
) -> tuple[IndexSummary, bool]:
    """Write the word table of `corpus` into a new store; (summary, whether anything was written).

    Everything is read and checked before the store is touched, so a bad input leaves no store.
    """
    table, summary = build_word_table(corpus, alignments, strict=strict)
    written = store.write_word_table(store_url, table)
    return summary, written
