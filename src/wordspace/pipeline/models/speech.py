"""wav2vec 2.0, HuBERT, WavLM and data2vec-audio through transformers, every hidden state.

Weights come from a local folder (`speech:/path/to/folder`, a transformers `save_pretrained`
folder) or from the local Hugging Face cache (`speech:facebook/wav2vec2-base`, or a registered
name such as `wav2vec2-base`); nothing is downloaded.

Frame geometry comes from the model's own convolution stack: the hop is the product of the
strides and the window (receptive field) is `1 + Σ (k_l − 1) · Π_{j<l} s_j`; an utterance of N
samples gives, layer by layer, `floor((L − k) / s) + 1` frames (for wav2vec 2.0 base: hop 320,
window 400, frames = floor((N − 400) / 320) + 1).

Batching. Models whose feature encoder uses layer norm (`feat_extract_norm = "layer"`, e.g.
wav2vec 2.0 large-lv60, HuBERT large, WavLM large) take an attention mask, so utterances of any
length share a batch with zero padding, and give what they give one by one. The others run only
utterances of the same length together (the rest one by one): models with group norm in the
first convolution (wav2vec 2.0 base, HuBERT base, WavLM base/base+) normalise each channel over
the whole time axis, padding included, and data2vec-audio's stack of five position convolutions
carries the padded positions' non-zero activations into the last real frames. Either way only
the frames of the real signal are returned.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.base import AudioModelAdapter, FrameGeometry
from wordspace.pipeline.models.devices import torch_device, torch_dtype
from wordspace.pipeline.models.registry import ModelEntry, register, register_path_prefix

SAMPLE_RATE = 16000
MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def conv_geometry(kernels: list[int], strides: list[int], sample_rate: int) -> FrameGeometry:
    """Hop and receptive field of a stack of unpadded 1-D convolutions."""
    hop, window = 1, 1
    for kernel, stride in zip(kernels, strides, strict=True):
        window += (kernel - 1) * hop
        hop *= stride
    return FrameGeometry(sample_rate=sample_rate, hop=hop, window=window)


def conv_output_length(n_samples: int, kernels: list[int], strides: list[int]) -> int:
    """Frames out of a stack of unpadded convolutions for `n_samples` in (0 if too short)."""
    length = n_samples
    for kernel, stride in zip(kernels, strides, strict=True):
        if length < kernel:
            return 0
        length = (length - kernel) // stride + 1
    return length


def _hint(repo_id: str) -> str:
    return (
        f"download it once where there is network (`hf download {repo_id}`) into the Hugging "
        "Face cache, or name a saved folder as speech:/path/to/folder"
    )


def resolve_speech_folder(path_or_id: str) -> Path:
    """A local folder, or the snapshot of a Hugging Face repository in the local cache."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    looks_like_path = path_or_id.startswith(("/", ".", "~")) or path_or_id.count("/") != 1
    if looks_like_path or path.exists():
        raise WordspaceError(
            f"speech model folder {path} does not exist; give a folder written by "
            "transformers save_pretrained, or a Hugging Face id in the local cache"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path_or_id, local_files_only=True))
    except Exception as error:  # the hub raises several types for "not cached"
        raise WordspaceError(
            f"{path_or_id} is not in the local Hugging Face cache; {_hint(path_or_id)}"
        ) from error


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise WordspaceError(
            f"{path}: unreadable model config ({error}); re-save the model"
        ) from error


def _model_class(model_type: str) -> Any:
    import transformers

    return {
        "wav2vec2": transformers.Wav2Vec2Model,
        "hubert": transformers.HubertModel,
        "wavlm": transformers.WavLMModel,
        "data2vec-audio": transformers.Data2VecAudioModel,
    }[model_type]


class TransformersSpeechAdapter(AudioModelAdapter):
    """Every hidden state (transformer input, then each layer) of a transformers speech model."""

    def __init__(self, path_or_id: str, name: str | None = None) -> None:
        self.folder = resolve_speech_folder(path_or_id)
        config_path = self.folder / "config.json"
        if not config_path.is_file():
            raise WordspaceError(
                f"{self.folder}: no config.json; give a folder written by save_pretrained"
            )
        config = _read_json(config_path)
        self.model_type = config.get("model_type", "")
        if self.model_type not in MODEL_TYPES:
            raise WordspaceError(
                f"{self.folder}: model_type {self.model_type!r} is not a speech model this "
                f"adapter reads ({', '.join(MODEL_TYPES)}); use the adapter for that architecture"
            )
        weights = [self.folder / file for file in WEIGHT_FILES if (self.folder / file).is_file()]
        if not weights:
            raise WordspaceError(
                f"{self.folder}: no {' or '.join(WEIGHT_FILES)}; the folder holds no weights"
            )
        self.kernels = list(config["conv_kernel"])
        self.strides = list(config["conv_stride"])
        self.name = name or f"speech:{path_or_id}"
        self.layer_names = [f"layer_{index}" for index in range(config["num_hidden_layers"] + 1)]
        self.dim = int(config["hidden_size"])
        self.source = str(self.folder) if name is None else f"{path_or_id} ({self.folder})"
        self.checkpoint_path = str(weights[0])
        self.geometry = conv_geometry(self.kernels, self.strides, SAMPLE_RATE)
        self.pads_with_mask = (
            self.model_type != "data2vec-audio" and config.get("feat_extract_norm") == "layer"
        )
        preprocessor = self.folder / "preprocessor_config.json"
        # transformers' feature extractor normalises by default; a folder may say otherwise.
        self.normalise = bool(
            _read_json(preprocessor).get("do_normalize", True) if preprocessor.is_file() else True
        )
        self.model: torch.nn.Module | None = None
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def load(self, device: str = "cpu", dtype: str = "float32") -> None:
        self.device, self.dtype = torch_device(device), torch_dtype(dtype)
        model_class = _model_class(self.model_type)
        try:
            model, info = model_class.from_pretrained(
                self.folder, local_files_only=True, output_loading_info=True
            )
        except (OSError, ValueError, RuntimeError) as error:
            raise WordspaceError(f"{self.folder}: weights do not load ({error})") from error
        if info["missing_keys"]:
            missing = ", ".join(sorted(info["missing_keys"])[:3])
            raise WordspaceError(
                f"{self.folder}: weights do not fit {model_class.__name__} (missing {missing}); "
                f"give a {self.model_type} checkpoint"
            )
        self.model = model.to(self.device, self.dtype).eval()

    def _prepare(self, waveform: np.ndarray) -> torch.Tensor:
        samples = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
        if self.normalise:
            samples = (samples - samples.mean()) / torch.sqrt(samples.var(correction=0) + 1e-7)
        # An utterance shorter than one frame is padded with silence to one frame.
        return torch.nn.functional.pad(samples, (0, max(0, self.geometry.window - len(samples))))

    def _forward(self, batch: list[torch.Tensor]) -> list[np.ndarray]:
        assert self.model is not None
        lengths = [len(samples) for samples in batch]
        padded = torch.nn.utils.rnn.pad_sequence(batch, batch_first=True)
        attention_mask = None
        if self.pads_with_mask:
            positions = torch.arange(padded.shape[1])
            attention_mask = (positions[None, :] < torch.tensor(lengths)[:, None]).long()
            attention_mask = attention_mask.to(self.device)
        outputs = self.model(
            padded.to(self.device, self.dtype),
            attention_mask=attention_mask,
            output_hidden_states=True,
        )
        hidden = torch.stack(outputs.hidden_states, dim=0).float().cpu().numpy()
        return [
            hidden[:, index, : conv_output_length(length, self.kernels, self.strides)]
            for index, length in enumerate(lengths)
        ]

    def frames(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        if self.model is None:
            raise WordspaceError(f"model {self.name} is not loaded; call load() first")
        prepared = [self._prepare(waveform) for waveform in waveforms]
        if self.pads_with_mask:
            groups = [list(range(len(prepared)))]
        else:
            by_length: dict[int, list[int]] = defaultdict(list)
            for index, samples in enumerate(prepared):
                by_length[len(samples)].append(index)
            groups = list(by_length.values())
        results: dict[int, np.ndarray] = {}
        with torch.inference_mode():
            for group in groups:
                for index, frames in zip(
                    group, self._forward([prepared[i] for i in group]), strict=True
                ):
                    results[index] = frames
        return [results[index] for index in range(len(prepared))]


NAMED_CHECKPOINTS = {
    "wav2vec2-base": ("facebook/wav2vec2-base", "wav2vec 2.0 base (LibriSpeech 960 h)"),
    "hubert-base": ("facebook/hubert-base-ls960", "HuBERT base (LibriSpeech 960 h)"),
    "wavlm-base-plus": ("microsoft/wavlm-base-plus", "WavLM base+ (94k h)"),
    "data2vec-audio-base": ("facebook/data2vec-audio-base", "data2vec-audio base (LS 960 h)"),
}


def _register_named(name: str, repo_id: str, description: str) -> None:
    register(
        ModelEntry(
            name=name,
            summary=f"{description}, 13 hidden states of 768, 50 frames/s",
            build=lambda: TransformersSpeechAdapter(repo_id, name=name),
            install_hint=_hint(repo_id),
        )
    )


for _name, (_repo_id, _description) in NAMED_CHECKPOINTS.items():
    _register_named(_name, _repo_id, _description)
register_path_prefix("speech", TransformersSpeechAdapter)
