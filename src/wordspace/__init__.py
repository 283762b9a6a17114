"""wordspace: layer-by-layer similarity of word representations."""
