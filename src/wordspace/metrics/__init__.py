"""The mathematics: layer-pair similarities of word embeddings as pure array functions."""

from wordspace.metrics.asif import STUDY_GRID, asif_grid, asif_retrieve, asif_sweep
from wordspace.metrics.asif_protocols import asif_paired_protocol, asif_study_protocol
from wordspace.metrics.cca import canonical_correlations, cca, cca_grid
from wordspace.metrics.cka import cka_grid, linear_cka
from wordspace.metrics.grid import similarity_grid
from wordspace.metrics.statistics import GramStatistics, gram_statistics

__all__ = [
    "STUDY_GRID",
    "asif_grid",
    "asif_paired_protocol",
    "asif_retrieve",
    "asif_study_protocol",
    "asif_sweep",
    "GramStatistics",
    "canonical_correlations",
    "cca",
    "cca_grid",
    "cka_grid",
    "gram_statistics",
    "linear_cka",
    "similarity_grid",
]
