"""wordspace: layer-by-layer similarity of word representations in speech, audio and text models."""

from wordspace.storage import Store, open_store

__all__ = ["Store", "open_store"]
__version__ = "0.1.0"
