"""Cheap deterministic test models, registered on import.

Dask workers in other processes load this file as a preload (`dask worker --preload PATH`, or
the `distributed.worker.preload` setting) so that they know the models too. Vectors depend only
on the word, its position in the utterance and the layer, so any two runs must agree exactly.
``WORDSPACE_TEST_MODEL_SECONDS`` makes each embed call sleep, to give a test time to kill a worker
mid-run.
"""

from __future__ import annotations

import os
import time
import zlib

import numpy as np

from wordspace.pipeline.models.base import ModelAdapter
from wordspace.pipeline.models.registry import ModelEntry, register

PATH = os.path.abspath(__file__)


class HashedWords(ModelAdapter):
    """A text model whose vectors are seeded by (word, position): 4 layers of 16 dims."""

    name = "hashed-words"
    modality = "text"
    layer_names = ["l0", "l1", "l2", "l3"]
    dim = 16
    source = "none (test model)"
    seed = 0

    def load(self, device: str = "cpu", dtype: str = "float32") -> None:
        pass

    def embed(self, utterances):
        time.sleep(float(os.environ.get("WORDSPACE_TEST_MODEL_SECONDS", "0")))
        out = []
        for utterance in utterances:
            rows = []
            for position, word in enumerate(utterance.words):
                rng = np.random.default_rng([zlib.crc32(word.encode()), position, self.seed])
                base = rng.standard_normal(16).astype(np.float32)
                noise = rng.standard_normal((4, 16)).astype(np.float32)
                rows.append(base[None] + noise * np.arange(1, 5, dtype=np.float32)[:, None] * 0.3)
            out.append(np.stack(rows, axis=1))
        return out


class OtherHashedWords(HashedWords):
    """A second model, different from the first, for comparisons and concurrent writers."""

    name = "other-hashed-words"
    layer_names = ["m0", "m1", "m2"]
    dim = 8
    seed = 1

    def embed(self, utterances):
        return [vectors[:3, :, :8] * 2.0 + 1.0 for vectors in super().embed(utterances)]


register(ModelEntry("hashed-words", "test", HashedWords))
register(ModelEntry("other-hashed-words", "test", OtherHashedWords))
