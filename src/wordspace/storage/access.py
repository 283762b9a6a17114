"""`open_store`: the user's lazy view of a store (nothing is read until a value is asked for)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import xarray as xr

from wordspace.storage import store


@dataclass(frozen=True)
class Store:
    """A wordspace store at a path or URL, opened lazily."""

    url: str

    @property
    def words(self) -> xr.Dataset:
        """The word table: coordinates on `word` (tokens) and `utt` (utterances)."""
        return store.open_word_table(self.url)

    @property
    def models(self) -> list[str]:
        return store.list_groups(self.url, "models")

    @property
    def comparisons(self) -> list[str]:
        return store.list_groups(self.url, "comparisons")

    def embedding(self, model: str) -> xr.DataArray:
        """(layer, word, dim), dask-backed, with the word table's coordinates on `word`."""
        return store.open_embedding(self.url, model)

    def comparison(self, model_a: str, model_b: str) -> xr.Dataset | None:
        return store.read_comparison(self.url, model_a, model_b)

    def tokens_of(self, model: str, word: str) -> xr.DataArray:
        """Every token of `word` (lower case) in `model`, all layers, still lazy."""
        embedding = self.embedding(model)
        mask = (embedding["text"] == word.lower()).compute()
        return embedding.isel(word=mask.values.nonzero()[0])

    def speaker_layer(self, model: str, speaker: str, layer: str | int) -> xr.DataArray:
        """One layer (by name or position) of one speaker's tokens, still lazy."""
        embedding = self.embedding(model)
        selected = (
            embedding.isel(layer=layer) if isinstance(layer, int) else embedding.sel(layer=layer)
        )
        mask = (embedding["speaker"] == str(speaker)).compute()
        return selected.isel(word=mask.values.nonzero()[0])


def open_store(url: str | os.PathLike) -> Store:
    """Open the store at `url` (a path or fsspec URL) lazily; it must hold a word table."""
    store.root_attrs(url)
    return Store(str(url))
