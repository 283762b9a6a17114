"""Choosing the layers and words a comparison uses."""

from __future__ import annotations

import numpy as np
import xarray as xr

from wordspace.errors import WordspaceError


def select_layers(embedding: xr.DataArray, layers: str | None, option: str) -> xr.DataArray:
    """The layers named or numbered in `layers` ("0,6,12" or layer names); all when None."""
    if not layers:
        return embedding
    names = [str(name) for name in embedding["layer"].values]
    chosen = []
    for part in (item.strip() for item in layers.split(",")):
        if part in names:
            chosen.append(names.index(part))
        elif part.lstrip("-").isdigit() and -len(names) <= int(part) < len(names):
            chosen.append(int(part) % len(names))
        else:
            raise WordspaceError(
                f"{option} {layers}: no layer {part!r} in {embedding.name} "
                f"(layers 0 to {len(names) - 1}: {', '.join(names)})"
            )
    return embedding.isel(layer=chosen)


def sample_words(n_words: int, sample: int | None, seed: int) -> np.ndarray | None:
    """Sorted random word indices (so chunks are read in order), or None for all words."""
    if sample is None or sample >= n_words:
        return None
    if sample < 4:
        raise WordspaceError(f"--sample {sample}: need at least 4 words")
    return np.sort(np.random.default_rng(seed).choice(n_words, size=sample, replace=False))
