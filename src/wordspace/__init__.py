"""wordspace: layer-by-layer similarity of word representations in speech, audio and text models."""

from typing import TYPE_CHECKING, Any

__all__ = ["Store", "open_store"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from wordspace.storage import Store, open_store


def __getattr__(name: str) -> Any:
    # The store's API imports xarray and zarr (about a second): loaded when first used, so that
    # `wordspace --help` and the package's version do not wait for it.
    if name in __all__:
        from wordspace import storage

        return getattr(storage, name)
    raise AttributeError(f"module 'wordspace' has no attribute {name!r}")
