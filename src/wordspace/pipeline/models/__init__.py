"""Model adapters: one file per model family, registered by name in `registry`."""
