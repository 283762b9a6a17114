"""`wordspace models`: one line per registered model, from its configuration alone."""

from __future__ import annotations

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.registry import path_prefixes, registered_models


def describe_models() -> list[str]:
    """Name, modality, layers, dimension, frame rate and weights' source of every model."""
    lines = []
    for name, entry in registered_models().items():
        try:
            adapter = entry.build()
        except WordspaceError as error:
            lines.append(f"{name:<18} not available: {error}")
            continue
        rate = f"{adapter.geometry.frame_rate:g} frames/s" if adapter.geometry else "per word"
        layers = adapter.layer_names
        shown = ", ".join(layers) if len(layers) <= 4 else f"{layers[0]} … {layers[-1]}"
        lines.append(
            f"{name:<18} {adapter.modality:<6} {len(layers):>2} layers ({shown}) × {adapter.dim}"
            f", {rate}; weights: {adapter.source}"
        )
    lines.append("checkpoints by path: " + ", ".join(f"{p}:PATH" for p in path_prefixes()))
    return lines
