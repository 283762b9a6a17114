"""What a model adapter is, and how audio frames become one vector per word.

Pooling convention (audio). Frame ``i`` of a model with hop ``h``, window ``w`` and offset ``o``
(samples) looks at samples ``[o + i·h, o + i·h + w)``; its *span* is the stride cell centred on
that window, ``[c_i − h/2, c_i + h/2)`` with ``c_i = o + i·h + w/2``. The cells tile time, so every
instant belongs to exactly one frame. A word ``[start, end)`` is the mean of the frames whose span
overlaps it by a positive amount; a word that overlaps none (zero length, or past the last frame)
takes the frame whose span covers its centre, clamped to the frames that exist. Padding frames
never exist for pooling: adapters return only the frames of the real signal.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np

Modality = Literal["audio", "text", "static"]
BOUNDARY_TOLERANCE = 1e-6  # in frames


@dataclass(frozen=True)
class FrameGeometry:
    """Where each output frame of an audio model sits in the input signal, in samples."""

    sample_rate: int
    hop: int
    window: int
    offset: float = 0.0

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def frame_centres(self, n_frames: int) -> np.ndarray:
        """Centre of each frame's window, in seconds."""
        index = np.arange(n_frames, dtype=np.float64)
        return (self.offset + index * self.hop + self.window / 2) / self.sample_rate

    def word_frame_ranges(
        self, starts: np.ndarray, ends: np.ndarray, n_frames: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """First and one-past-last frame of each word, by the module's pooling convention."""
        if n_frames < 1:
            raise ValueError("an utterance must have at least one frame")
        hop_seconds = self.hop / self.sample_rate
        first_centre = (self.offset + self.window / 2) / self.sample_rate
        # Cell i is [first_centre + (i - 1/2)·hop, first_centre + (i + 1/2)·hop).
        position_start = (np.asarray(starts, dtype=np.float64) - first_centre) / hop_seconds + 0.5
        position_end = (np.asarray(ends, dtype=np.float64) - first_centre) / hop_seconds + 0.5
        # A boundary that falls on a cell edge up to float rounding belongs to the later cell.
        first = np.floor(position_start + BOUNDARY_TOLERANCE).astype(np.int64)
        stop = np.ceil(position_end - BOUNDARY_TOLERANCE).astype(np.int64)
        first = np.clip(first, 0, n_frames)
        stop = np.clip(stop, 0, n_frames)
        empty = stop <= first
        centre = np.floor((position_start + position_end) / 2).astype(np.int64)
        centre = np.clip(centre, 0, n_frames - 1)
        first = np.where(empty, centre, first)
        stop = np.where(empty, centre + 1, stop)
        return first, stop


def pool_frames(
    frames: np.ndarray, geometry: FrameGeometry, starts: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """Mean of each word's frames: (layers, frames, dim) -> (layers, words, dim), float32."""
    n_layers, n_frames, dim = frames.shape
    first, stop = geometry.word_frame_ranges(starts, ends, n_frames)
    # Prefix sums make every word's mean two lookups, whatever the number of words.
    cumulative = np.zeros((n_layers, n_frames + 1, dim), dtype=np.float64)
    np.cumsum(frames, axis=1, dtype=np.float64, out=cumulative[:, 1:])
    sums = cumulative[:, stop] - cumulative[:, first]
    return (sums / (stop - first)[None, :, None]).astype(np.float32)


def mean_by_group(vectors: np.ndarray, group_of_row: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean of the rows of `vectors` (layers, rows, dim) by group; groups with no row are NaN."""
    n_layers, _, dim = vectors.shape
    sums = np.zeros((n_layers, n_groups, dim), dtype=np.float64)
    valid = group_of_row >= 0
    np.add.at(sums, (slice(None), group_of_row[valid]), vectors[:, valid])
    counts = np.bincount(group_of_row[valid], minlength=n_groups).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[None, :, None]
    return means.astype(np.float32)


@dataclass
class Utterance:
    """What a model sees of one utterance: its words, their times and (for audio) its samples."""

    id: str
    words: list[str]
    starts: np.ndarray
    ends: np.ndarray
    transcript: str
    waveform: np.ndarray | None = None


class ModelAdapter(ABC):
    """One model: its description (cheap, no weights) and, once loaded, its word vectors.

    Subclasses set `name`, `modality`, `layer_names`, `dim`, `source` (where the weights come
    from) and, for audio, `geometry`, in `__init__` without loading weights; `load` does the
    heavy part once per worker.
    """

    name: str
    modality: Modality
    layer_names: list[str]
    dim: int
    source: str
    geometry: FrameGeometry | None = None
    pooling: str = ""
    checkpoint_path: str | None = None

    @abstractmethod
    def load(self, device: str = "cpu", dtype: str = "float32") -> None:
        """Load weights onto `device`, in evaluation mode."""

    @abstractmethod
    def embed(self, utterances: list[Utterance]) -> list[np.ndarray]:
        """Per utterance, (layers, words, dim) float32; NaN rows for words it cannot represent."""

    def embed_words(self, utterances: list[Utterance]) -> np.ndarray:
        """The words of all `utterances` in order, (layers, words, dim) float32, as `embed` gives
        them. Adapters that compute every word in one array return that array itself."""
        return np.concatenate(self.embed(utterances), axis=1)


class WordModelAdapter(ModelAdapter):
    """A model that computes the words of a whole batch in one array (text, static vectors):
    `embed` gives views of `embed_words`'s array, one per utterance."""

    @abstractmethod
    def embed_words(self, utterances: list[Utterance]) -> np.ndarray:
        """The words of all `utterances` in order, (layers, words, dim) float32."""

    def embed(self, utterances: list[Utterance]) -> list[np.ndarray]:
        vectors = self.embed_words(utterances)
        bounds = np.cumsum([0] + [len(utterance.words) for utterance in utterances]).tolist()
        return [vectors[:, start:stop] for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]


class AudioModelAdapter(ModelAdapter):
    """An audio model: it produces frames, and words are pooled from them by `pool_frames`."""

    modality: Modality = "audio"
    pooling = "mean of the frames whose stride cell overlaps the word (see models/base.py)"

    @abstractmethod
    def frames(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        """Per waveform (at `geometry.sample_rate`): frames (layers, frames, dim), no padding."""

    def embed(self, utterances: list[Utterance]) -> list[np.ndarray]:
        assert self.geometry is not None
        frames = self.frames([utterance.waveform for utterance in utterances])
        return [
            pool_frames(utterance_frames, self.geometry, utterance.starts, utterance.ends)
            for utterance_frames, utterance in zip(frames, utterances, strict=True)
        ]
