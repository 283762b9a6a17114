"""The store's schema and I/O: word table, model groups, comparisons, lazy opening."""

from wordspace.storage.access import Store, open_store

__all__ = ["Store", "open_store"]
