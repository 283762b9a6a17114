"""BERT-family text encoders through transformers: every hidden state, one vector per word.

A word is the mean of its sub-word tokens, computed with the utterance's transcript as context.
Words are given to the tokenizer already split (`is_split_into_words=True`), so every token maps
to its word exactly; a fast tokenizer encodes each word of a pre-split sequence on its own
(normaliser, pre-tokeniser and model run per word), so a word's pieces are computed once per
worker and kept. An utterance longer than the model's maximum length is cut into windows of that
length overlapping by half; each token is taken from the window where it has the most context on
both sides (an edge of the utterance counts as full context).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.base import Utterance, WordModelAdapter
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
class _Tokens:
    """The tokens of one `embed_words` call, flat, and the windows (model inputs) cut from them."""

    ids: np.ndarray  # token ids of all utterances, one after another
    words: np.ndarray  # for each token, its word (numbered across the call)
    owner: np.ndarray  # for each token, the window whose output it is taken from
    starts: np.ndarray  # first token of each window
    stops: np.ndarray  # one past the last token of each window


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


class TransformerTextModel(WordModelAdapter):
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
        self._pieces: dict[str, list[int]] = {}
        self._model = model.to(self._device).eval()

    def _other_architecture(self, detail: str) -> WordspaceError:
        return WordspaceError(
            f"{self.checkpoint_path}: weights do not fit {self.folder}/config.json ({detail});"
            " the folder holds another architecture"
        )

    def _word_pieces(self, utterances: list[Utterance]) -> list[list[int]]:
        """The token ids of every word of `utterances`, in order."""
        words = [word for utterance in utterances for word in utterance.words]
        new = [word for word in dict.fromkeys(words) if word not in self._pieces]
        if new:
            encoding = self._tokenizer(
                [[word] for word in new], is_split_into_words=True, add_special_tokens=False
            )
            self._pieces.update(zip(new, encoding["input_ids"], strict=True))
        return [self._pieces[word] for word in words]

    def _tokens(self, utterances: list[Utterance]) -> tuple[_Tokens, np.ndarray]:
        """The tokens of `utterances` in windows, and the number of tokens of every word."""
        pieces = self._word_pieces(utterances)
        tokens_per_word = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        n_tokens = int(tokens_per_word.sum())
        ids = np.fromiter((token for word in pieces for token in word), np.int64, n_tokens)
        word_bounds = np.cumsum([0] + [len(utterance.words) for utterance in utterances])
        token_bounds = np.concatenate([[0], np.cumsum(tokens_per_word)])[word_bounds]
        owner = np.empty(n_tokens, dtype=np.int64)
        starts: list[int] = []
        stops: list[int] = []
        for first, last in zip(token_bounds[:-1].tolist(), token_bounds[1:].tolist(), strict=True):
            if last - first <= self._window:  # most utterances: one window, every token its own
                owner[first:last] = len(starts)
                starts.append(first)
                stops.append(last)
                continue
            spans = token_windows(last - first, self._window)
            owner[first:last] = len(starts) + window_of_token(last - first, spans)
            starts += [first + start for start, _ in spans]
            stops += [first + stop for _, stop in spans]
        tokens = _Tokens(
            ids=ids,
            words=np.repeat(np.arange(len(pieces)), tokens_per_word),
            owner=owner,
            starts=np.asarray(starts, dtype=np.int64),
            stops=np.asarray(stops, dtype=np.int64),
        )
        return tokens, tokens_per_word

    def embed_words(self, utterances: list[Utterance]) -> np.ndarray:
        if self._model is None:
            raise RuntimeError(f"{self.name}: call load() before embed()")
        tokens, tokens_per_word = self._tokens(utterances)
        # One row more than there are words: padding and special tokens are added into it.
        sums = torch.from_numpy(
            np.zeros((len(self.layer_names), len(tokens_per_word) + 1, self.dim), np.float32)
        )
        lengths = tokens.stops - tokens.starts
        order = [int(index) for index in np.argsort(lengths, kind="stable") if lengths[index]]
        with torch.inference_mode():
            while order:
                batch = _take_batch(
                    order,
                    lengths,
                    len(self._prefix) + len(self._suffix),
                    TOKENS_PER_BATCH[self._device.type],
                )
                self._accumulate(tokens, np.asarray(batch), sums)
        means = sums.numpy()[:, :-1]
        with np.errstate(invalid="ignore"):  # 0 / 0: NaN for tokenless words
            means /= tokens_per_word[None, :, None].astype(np.float32)
        return means

    def _accumulate(self, tokens: _Tokens, windows: np.ndarray, sums: torch.Tensor) -> None:
        """Run the model on `windows` and add each owned token's states to its word's sum."""
        n_prefix, n_suffix = len(self._prefix), len(self._suffix)
        lengths = tokens.stops[windows] - tokens.starts[windows]
        n_rows, length = len(windows), int(lengths.max()) + n_prefix + n_suffix
        # Every token of the sub-batch: its row, its column and its index in the call.
        row = np.repeat(np.arange(n_rows), lengths)
        offset = np.arange(len(row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        token = tokens.starts[windows][row] + offset
        column = n_prefix + offset
        input_ids = np.full((n_rows, length), self._pad_id, dtype=np.int64)
        input_ids[:, :n_prefix] = self._prefix
        input_ids[row, column] = tokens.ids[token]
        for index, suffix_id in enumerate(self._suffix):
            input_ids[np.arange(n_rows), n_prefix + lengths + index] = suffix_id
        ends = n_prefix + lengths + n_suffix
        attention = (np.arange(length)[None, :] < ends[:, None]).astype(np.int64)
        # The word each position of the batch adds into; the spare last row of `sums` by default.
        token_word = np.full(n_rows * length, sums.shape[1] - 1, dtype=np.int64)
        owned = tokens.owner[token] == windows[row]
        token_word[(row * length + column)[owned]] = tokens.words[token[owned]]
        output = self._model(
            input_ids=torch.from_numpy(input_ids).to(self._device),
            attention_mask=torch.from_numpy(attention).to(self._device),
            output_hidden_states=True,
        )
        # Each layer's output is added into the word sums where it lies, one call per layer:
        # MiniLM over the demo 17 ms in all, against 110 ms for a sparse (word x token) product
        # added into the sums.
        token_word_index = torch.from_numpy(token_word)
        for layer_sums, state in zip(sums, output.hidden_states, strict=True):
            token_states = state.reshape(-1, self.dim).to("cpu", torch.float32)
            layer_sums.index_add_(0, token_word_index, token_states)


def _take_batch(
    order: list[int], lengths: np.ndarray, n_special: int, max_tokens: int
) -> list[int]:
    """Pop from `order` (sorted by length) the windows of a sub-batch of at most `max_tokens`."""
    batch = [order.pop(0)]
    while order:
        padded = (len(batch) + 1) * (int(lengths[order[0]]) + n_special)
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
