"""The mathematics: layer-pair similarities of word embeddings as pure array functions."""

from wordspace.metrics.cca import canonical_correlations, cca, cca_grid
from wordspace.metrics.cka import cka_grid, linear_cka
from wordspace.metrics.grid import similarity_grid
from wordspace.metrics.statistics import GramStatistics, gram_statistics

__all__ = [
    "GramStatistics",
    "canonical_correlations",
    "cca",
    "cca_grid",
    "cka_grid",
    "gram_statistics",
    "linear_cka",
    "similarity_grid",
]
