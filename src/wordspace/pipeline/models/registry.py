"""The models wordspace knows by name, and how a user's own checkpoint path is recognised."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.base import ModelAdapter


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: `build()` describes it (reads configs only), `install_hint` if absent."""

    name: str
    summary: str
    build: Callable[[], ModelAdapter]
    install_hint: str = ""


_ENTRIES: dict[str, ModelEntry] = {}
# Prefix (e.g. "hf", "glove", "beats") -> factory taking the user's path after "prefix:".
_PATH_FACTORIES: dict[str, Callable[[str], ModelAdapter]] = {}


def register(entry: ModelEntry) -> None:
    """Add a named model to the registry."""
    _ENTRIES[entry.name] = entry


def register_path_prefix(prefix: str, factory: Callable[[str], ModelAdapter]) -> None:
    """Let users name a checkpoint as `prefix:/path/to/weights`."""
    _PATH_FACTORIES[prefix] = factory


def _load_entries() -> None:
    # Adapter modules register themselves on import; importing them here keeps the registry
    # complete without the modules importing each other.
    from wordspace.pipeline.models import catalogue  # noqa: F401


def registered_models() -> dict[str, ModelEntry]:
    """Every named model, in registration order."""
    _load_entries()
    return dict(_ENTRIES)


def path_prefixes() -> list[str]:
    _load_entries()
    return sorted(_PATH_FACTORIES)


def build_model(name: str) -> ModelAdapter:
    """The adapter for a registered name or a `prefix:/path` spec; unknown names list the known."""
    _load_entries()
    if name in _ENTRIES:
        return _ENTRIES[name].build()
    prefix, separator, path = name.partition(":")
    if separator and prefix in _PATH_FACTORIES:
        return _PATH_FACTORIES[prefix](path)
    known = ", ".join(_ENTRIES)
    prefixes = ", ".join(f"{p}:PATH" for p in sorted(_PATH_FACTORIES))
    raise WordspaceError(
        f"unknown model {name!r}; known models: {known}; or a checkpoint as {prefixes}"
    )
