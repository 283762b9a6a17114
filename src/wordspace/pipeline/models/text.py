"""BERT-family text encoders through transformers: every hidden state, one vector per word.

A word is the mean of its sub-word tokens, computed with the utterance's transcript as context.
Words are given to the tokenizer already split (`is_split_into_words=True`), so its `word_ids()`
map every token to its word exactly. An utterance longer than the model's maximum length is cut
into windows of that length overlapping by half; each token is taken from the window where it
has the most context on both sides (an edge of the utterance counts as full context).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse
import torch

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.base import ModelAdapter, Utterance
from wordspace.pipeline.models.devices import torch_device, torch_dtype
from wordspace.pipeline.models.registry import ModelEntry, register

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# Sub-batches hold at most this many (padded) tokens, which bounds activation memory. On CPUs
# small sub-batches keep the activations in cache: over the demo corpus, MiniLM's forward took
# 1.95 s at 8,192 tokens, 1.8 s at 2,048 and 1.4 s at 1,024; MPNet's 14.7, 11.0 and 9.3 s.
TOKENS_PER_BATCH = {"cpu": 1024, "cuda": 8192}


def token_windows(n_tokens: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) of windows of `size` tokens, overlapping by half, covering `n_tokens`."""
    if n_tokens <= size:
        return [(0, n_tokens)]
    stride = max(size // 2, 1)
    starts = list(range(0, n_tokens - size, stride)) + [n_tokens - size]
    return [(start, start + size) for start in starts]


def window_of_token(n_tokens: int, windows: list[tuple[int, int]]) -> np.ndarray:
    """For each token, the window in which it is farthest from a cut (a window edge inside)."""
    positions = np.arange(n_tokens)
    best_window = np.zeros(n_tokens, dtype=np.int64)
    best_margin = np.full(n_tokens, -1.0)
    for index, (start, stop) in enumerate(windows):
        inside = (positions >= start) & (positions < stop)
        left = positions - start if start > 0 else np.full(n_tokens, np.inf)
        right = stop - 1 - positions if stop < n_tokens else np.full(n_tokens, np.inf)
        margin = np.where(inside, np.minimum(left, right), -1.0)
        better = margin > best_margin
        best_window[better] = index
        best_margin[better] = margin[better]
    return best_window


@dataclass
class _Window:
    ids: list[int]
    positions: np.ndarray  # positions in `ids` of the tokens this window contributes
    words: np.ndarray  # word (numbered across the whole call) of each of those tokens


def resolve_hf_folder(spec: str) -> Path:
    """A local transformers folder, or the snapshot folder of a model id in the local HF cache."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return folder
    if folder.is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1:
        raise WordspaceError(f"hf:{spec}: no such folder; give a transformers model folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=spec, local_files_only=True))
    except Exception as error:  # the hub raises several unrelated types for "not cached"
        raise WordspaceError(
            f"hf:{spec}: neither a folder nor in the local Hugging Face cache; download it once"
            f" with `huggingface-cli download {spec}` (needs network) or give a folder"
        ) from error


def _read_config(folder: Path):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        raise WordspaceError(
            f"{folder}: not a transformers model folder (config.json missing or unknown: "
            f"{str(error).splitlines()[0]}); give a BERT-family model folder"
        ) from error
    if config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES or config.is_encoder_decoder:
        raise WordspaceError(
            f"{folder}: holds a {config.model_type!r} model, not a BERT-family text encoder"
            " (bert, roberta, mpnet, ...); give such a folder"
        )
    return config


class TransformerTextModel(ModelAdapter):
    """A BERT-family encoder: the embeddings' output and every layer's, pooled to words."""

    modality = "text"
    pooling = (
        "mean of the word's sub-word tokens, transcript as context; long utterances in windows"
        " overlapping by half, each token from the window where it has the most context"
    )

    def __init__(self, name: str, folder: Path, source: str) -> None:
        config = _read_config(folder)
        weights = [folder / file for file in WEIGHT_FILES if (folder / file).is_file()]
        if not weights:
            raise WordspaceError(
                f"{folder}: no weights file ({', '.join(WEIGHT_FILES)}); give a complete folder"
            )
        self.name = name
        self.folder = folder
        self.source = source
        self.checkpoint_path = str(weights[0])
        self.dim = int(config.hidden_size)
        self.layer_names = ["embeddings"] + [
            f"layer_{index}" for index in range(1, int(config.num_hidden_layers) + 1)
        ]
        self._max_positions = int(config.max_position_embeddings)
        self._model = None
        self._tokenizer = None

    def load(self, device: str = "cpu", dtype: str = "float32") -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        self._device = torch_device(device)
        transformers_logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.folder)
            if getattr(tokenizer, "add_prefix_space", None) is False:  # BPE on pre-split words
                tokenizer = AutoTokenizer.from_pretrained(self.folder, add_prefix_space=True)
            model, info = AutoModel.from_pretrained(
                self.folder, dtype=torch_dtype(dtype), output_loading_info=True
            )
        except (OSError, ValueError) as error:
            raise WordspaceError(
                f"{self.folder}: cannot load the model ({str(error).splitlines()[0]})"
            ) from error
        except RuntimeError as error:  # transformers' report of weights of the wrong shapes
            raise self._other_architecture("tensors of other shapes") from error
        # Only the pooler (unused here) may be missing; anything else means other weights.
        missing = sorted(key for key in info["missing_keys"] if "pooler" not in key)
        if missing or info["mismatched_keys"]:
            raise self._other_architecture(f"missing {missing[:2]}")
        if not tokenizer.is_fast:
            raise WordspaceError(
                f"{self.folder}: needs a fast tokenizer (tokenizer.json) to align words to tokens"
            )
        probe = tokenizer(["a"], is_split_into_words=True)
        probe_words = probe.word_ids()
        first = probe_words.index(0)
        last = len(probe_words) - 1 - probe_words[::-1].index(0)
        self._prefix = probe["input_ids"][:first]
        self._suffix = probe["input_ids"][last + 1 :]
        limit = tokenizer.model_max_length
        if limit > self._max_positions:  # unset in the tokenizer; RoBERTa-style offsets take 2
            limit = self._max_positions - 2
        self._window = limit - len(self._prefix) - len(self._suffix)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._tokenizer = tokenizer
        self._model = model.to(self._device).eval()

    def _other_architecture(self, detail: str) -> WordspaceError:
        return WordspaceError(
            f"{self.checkpoint_path}: weights do not fit {self.folder}/config.json ({detail});"
            " the folder holds another architecture"
        )

    def _windows(self, utterances: list[Utterance]) -> tuple[list[_Window], np.ndarray]:
        """The model inputs for `utterances`, and the number of tokens of every word."""
        encoding = self._tokenizer(
            [list(utterance.words) for utterance in utterances],
            is_split_into_words=True,
            add_special_tokens=False,
            verbose=False,  # long utterances are windowed below, not truncated
        )
        windows: list[_Window] = []
        token_words = []
        first_word = 0
        for index, utterance in enumerate(utterances):
            ids = encoding["input_ids"][index]
            words = np.asarray(encoding.word_ids(index), dtype=np.int64) + first_word
            token_words.append(words)
            if len(ids) <= self._window:  # most utterances: one window, every token its own
                windows.append(_Window(ids, np.arange(len(ids)), words))
            else:
                spans = token_windows(len(ids), self._window)
                owner = window_of_token(len(ids), spans)
                for window_index, (start, stop) in enumerate(spans):
                    positions = np.flatnonzero(owner[start:stop] == window_index)
                    windows.append(
                        _Window(ids[start:stop], positions, words[start:stop][positions])
                    )
            first_word += len(utterance.words)
        all_token_words = np.concatenate(token_words) if token_words else np.zeros(0, np.int64)
        return windows, np.bincount(all_token_words, minlength=first_word)

    def embed(self, utterances: list[Utterance]) -> list[np.ndarray]:
        if self._model is None:
            raise RuntimeError(f"{self.name}: call load() before embed()")
        windows, tokens_per_word = self._windows(utterances)
        sums = np.zeros((len(self.layer_names), len(tokens_per_word), self.dim), np.float32)
        order = sorted(
            (index for index, window in enumerate(windows) if window.ids),
            key=lambda index: len(windows[index].ids),
        )
        with torch.inference_mode():
            while order:
                batch = _take_batch(
                    order,
                    windows,
                    len(self._prefix) + len(self._suffix),
                    TOKENS_PER_BATCH[self._device.type],
                )
                self._accumulate([windows[index] for index in batch], sums)
        with np.errstate(invalid="ignore"):  # 0 / 0: NaN for tokenless words
            sums /= tokens_per_word[None, :, None].astype(np.float32)
        bounds = np.cumsum([0] + [len(utterance.words) for utterance in utterances])
        return [sums[:, start:stop] for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]

    def _accumulate(self, windows: list[_Window], sums: np.ndarray) -> None:
        """Run the model on `windows` and add each assigned token's states to its word's sum."""
        length = max(len(window.ids) for window in windows) + len(self._prefix) + len(self._suffix)
        input_ids = np.full((len(windows), length), self._pad_id, dtype=np.int64)
        attention = np.zeros((len(windows), length), dtype=np.int64)
        for row, window in enumerate(windows):
            sequence = self._prefix + list(window.ids) + self._suffix
            input_ids[row, : len(sequence)] = sequence
            attention[row, : len(sequence)] = 1
        output = self._model(
            input_ids=torch.from_numpy(input_ids).to(self._device),
            attention_mask=torch.from_numpy(attention).to(self._device),
            output_hidden_states=True,
        )
        # Pooling in numpy, one sparse (word x token position) product per layer straight from
        # the layer's output: torch's small multi-threaded ops stall at their barriers when the
        # cores are shared, and np.add.reduceat along rows is 30 times slower.
        positions = np.concatenate(
            [row * length + len(self._prefix) + w.positions for row, w in enumerate(windows)]
        )
        words = np.concatenate([w.words for w in windows])
        first, last = int(words.min()), int(words.max()) + 1
        token_to_word = scipy.sparse.csr_matrix(
            (np.ones(len(positions), np.float32), (words - first, positions)),
            shape=(last - first, len(windows) * length),
        )
        for layer_sums, state in zip(sums, output.hidden_states, strict=True):
            tokens = state.reshape(-1, self.dim).cpu().numpy()
            layer_sums[first:last] += token_to_word @ tokens.astype(np.float32, copy=False)


def _take_batch(
    order: list[int], windows: list[_Window], n_special: int, max_tokens: int
) -> list[int]:
    """Pop from `order` (sorted by length) the windows of a sub-batch of at most `max_tokens`."""
    batch = [order.pop(0)]
    while order:
        padded = (len(batch) + 1) * (len(windows[order[0]].ids) + n_special)
        if padded > max_tokens:
            break
        batch.append(order.pop(0))
    return batch


def hf_model(spec: str) -> TransformerTextModel:
    """`hf:SPEC`: a transformers folder or a model id already in the local Hugging Face cache."""
    folder = resolve_hf_folder(spec)
    return TransformerTextModel(Path(spec).name, folder, source=str(folder))


def _bert_base_uncased() -> TransformerTextModel:
    for repo in ("google-bert/bert-base-uncased", "bert-base-uncased"):
        try:
            folder = resolve_hf_folder(repo)
        except WordspaceError:
            continue
        return TransformerTextModel("bert-base-uncased", folder, source=f"HF cache: {folder}")
    raise WordspaceError(
        "bert-base-uncased is not in the local Hugging Face cache; " + BERT_BASE_HINT
    )


BERT_BASE_HINT = (
    "run `huggingface-cli download google-bert/bert-base-uncased` once (needs network),"
    " or pass a folder as hf:/path"
)

register(
    ModelEntry(
        name="bert-base-uncased",
        summary="BERT base uncased (12 layers × 768), as in the study; from the local HF cache",
        build=_bert_base_uncased,
        install_hint=BERT_BASE_HINT,
    )
)
