"""The word table's schema and its streaming writer.

String columns are held as `pandas.Categorical` (integer codes + distinct values) and turned into
strings one chunk of rows at a time while writing, so a table of ten million tokens never holds
ten million Python strings at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import zarr

WORD_COLUMNS = {
    "text": str,
    "utterance": str,
    "speaker": str,
    "chapter": str,
    "gender": str,
    "position": np.int32,
    "start": np.float64,
    "end": np.float64,
    "phones": str,
    "utterance_index": np.int32,
}
UTTERANCE_COLUMNS = {
    "utterance_id": str,
    "audio_path": str,
    "sample_rate": np.int32,
    "duration": np.float64,
    "transcript": str,
    "utterance_speaker": str,
}
ROWS_PER_CHUNK = 1_000_000

Column = np.ndarray | pd.Categorical


def as_column(values: Any, kind: type) -> Column:
    """A column as the writer takes it: Categorical for strings, a typed array for numbers."""
    if kind is str:
        if isinstance(values, pd.Categorical):
            return values
        return pd.Categorical(np.asarray(values, dtype=object))
    return np.asarray(values, dtype=kind)


@dataclass
class WordTable:
    """Word-level columns (dim `word`) and utterance-level columns (dim `utt`) of a corpus."""

    words: dict[str, Column]
    utterances: dict[str, Column]
    attrs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_columns(
        cls, words: dict[str, Any], utterances: dict[str, Any], **attrs: Any
    ) -> WordTable:
        """Check the columns against the schema and convert them."""
        for given, schema, dim in (
            (words, WORD_COLUMNS, "word"),
            (utterances, UTTERANCE_COLUMNS, "utt"),
        ):
            missing = set(schema) - set(given)
            if missing:
                raise ValueError(f"word table: {dim} columns {sorted(missing)} are missing")
        return cls(
            {name: as_column(words[name], kind) for name, kind in WORD_COLUMNS.items()},
            {name: as_column(utterances[name], kind) for name, kind in UTTERANCE_COLUMNS.items()},
            attrs,
        )

    @property
    def n_words(self) -> int:
        return len(self.words["text"])

    @property
    def n_utterances(self) -> int:
        return len(self.utterances["utterance_id"])

    def fingerprint(self) -> str:
        """A hash of what identifies a corpus's tokens: utterances, words and their times."""
        digest = hashlib.sha256()
        for start in range(0, self.n_words, ROWS_PER_CHUNK):
            rows = slice(start, start + ROWS_PER_CHUNK)
            for name in ("utterance", "text"):
                digest.update("\n".join(_strings(self.words[name][rows])).encode())
            for name in ("start", "end"):
                digest.update(np.ascontiguousarray(self.words[name][rows]).tobytes())
        return digest.hexdigest()[:32]


def _strings(column: Column) -> np.ndarray:
    return np.asarray(column, dtype=object)


def write_columns(group: zarr.Group, table: WordTable) -> None:
    """Create the table's arrays in `group` and fill them a chunk of rows at a time."""
    for dim, columns, schema in (
        ("word", table.words, WORD_COLUMNS),
        ("utt", table.utterances, UTTERANCE_COLUMNS),
    ):
        for name, kind in schema.items():
            column = columns[name]
            length = len(column)
            array = group.create_array(
                name,
                shape=(length,),
                dtype=str if kind is str else kind,
                chunks=(max(1, min(ROWS_PER_CHUNK, length)),),
                dimension_names=(dim,),
            )
            for start in range(0, length, ROWS_PER_CHUNK):
                rows = column[start : start + ROWS_PER_CHUNK]
                array[start : start + len(rows)] = _strings(rows) if kind is str else rows
    # xarray reads the names listed here as coordinates rather than data variables.
    group.attrs["coordinates"] = " ".join([*WORD_COLUMNS, *UTTERANCE_COLUMNS])
