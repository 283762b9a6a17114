"""BEATs (Chen et al. 2022), the project's own implementation of its encoder, from a checkpoint.

The official checkpoint (`BEATs_iter3.pt`) is a dict `{'cfg': {...}, 'model': state_dict}`; this
module reads it with the official parameter names. The model: 128-bin Kaldi fbank at 10 ms,
normalised as `(fbank − 15.41663) / (2 · 6.55582)`; 16×16 patches (a conv with stride 16), so
each 160 ms time step holds 8 frequency patches and a layer's tokens are (time steps × 8), in
time-major order; layer norm; projection 512 → 768; a convolutional position embedding; then a
WavLM-style post-norm transformer (deep norm, gated relative position bias shared by the layers).

A word is the mean of the tokens of the time steps that overlap it: the 8 patches of a time step
are averaged first (every time step has 8, so this is the mean of all its tokens), then time
steps are pooled by the convention of `models/base.py` with the geometry of a time step: hop
2560 samples (16 fbank frames of 160), window 2800 (16 frames of 400 samples, 160 apart).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.base import AudioModelAdapter, FrameGeometry
from wordspace.pipeline.models.cache import cache_root
from wordspace.pipeline.models.devices import torch_device, torch_dtype
from wordspace.pipeline.models.fbank import kaldi_fbank, kaldi_window_samples
from wordspace.pipeline.models.registry import ModelEntry, register, register_path_prefix

SAMPLE_RATE = 16000
FBANK_BINS = 128
FBANK_FRAME_MS = 25.0
FBANK_SHIFT_MS = 10.0
FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
CHECKPOINT_NAME = "BEATs_iter3.pt"
INSTALL_HINT = (
    f"download {CHECKPOINT_NAME} (https://github.com/microsoft/unilm/tree/master/beats) into "
    "$WORDSPACE_CACHE (default ~/.cache/wordspace), or name any BEATs checkpoint as "
    "beats:/path/to/BEATs.pt"
)


@dataclass(frozen=True)
class BeatsConfig:
    """The architecture fields of the official `BEATsConfig`, with its defaults."""

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    deep_norm: bool = False
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> BeatsConfig:
        """Keep the architecture keys of a checkpoint's `cfg` (training options are ignored)."""
        names = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in cfg.items() if key in names})

    def to_dict(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in fields(self)}

    @property
    def patch_hop_samples(self) -> int:
        return self.input_patch_size * kaldi_window_samples(SAMPLE_RATE, FBANK_SHIFT_MS)

    @property
    def patch_window_samples(self) -> int:
        shift = kaldi_window_samples(SAMPLE_RATE, FBANK_SHIFT_MS)
        return (
            kaldi_window_samples(SAMPLE_RATE, FBANK_FRAME_MS) + (self.input_patch_size - 1) * shift
        )


def relative_position_buckets(
    relative_positions: torch.Tensor, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5-style two-sided buckets: half per side, exact up to a quarter, then log-spaced."""
    per_direction = num_buckets // 2
    buckets = (relative_positions > 0).to(torch.long) * per_direction
    distance = relative_positions.abs()
    max_exact = per_direction // 2
    logarithmic = max_exact + (
        torch.log(distance.clamp(min=1).float() / max_exact)
        / math.log(max_distance / max_exact)
        * (per_direction - max_exact)
    ).to(torch.long)
    logarithmic = logarithmic.clamp(max=per_direction - 1)
    return buckets + torch.where(distance < max_exact, distance, logarithmic)


class _WeightNormConv1d(nn.Module):
    """Grouped conv whose kernel is `weight_g · weight_v / ‖weight_v‖`, norm per kernel tap."""

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel_size))
        self.weight_v = nn.Parameter(torch.randn(channels, channels // groups, kernel_size) * 0.02)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.groups = groups
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.weight_v.norm(dim=(0, 1), keepdim=True)
        weight = self.weight_g * self.weight_v / norm
        out = functional.conv1d(
            x, weight, self.bias, padding=self.kernel_size // 2, groups=self.groups
        )
        # An even kernel with symmetric padding yields one extra step; drop it ("same" length).
        return out[:, :, : x.shape[2]]


def _activation(name: str) -> Any:
    if name == "gelu":
        return lambda x: functional.gelu(x.float()).type_as(x)
    if name == "relu":
        return functional.relu
    raise WordspaceError(f"BEATs activation_fn {name!r} is not supported; use 'gelu' or 'relu'")


class _Attention(nn.Module):
    def __init__(self, config: BeatsConfig, has_bias_table: bool) -> None:
        super().__init__()
        dim, heads = config.encoder_embed_dim, config.encoder_attention_heads
        self.heads = heads
        self.head_dim = dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        if has_bias_table:
            self.relative_attention_bias = nn.Embedding(config.num_buckets, heads)
        self.gru_rel_pos = config.gru_rel_pos
        if config.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))

    def forward(
        self, x: torch.Tensor, key_padding: torch.Tensor | None, position_bias: torch.Tensor | None
    ) -> torch.Tensor:
        batch, length, dim = x.shape

        def split(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

        query = split(self.q_proj(x))
        key, value = split(self.k_proj(x)), split(self.v_proj(x))
        scores = (query * self.head_dim**-0.5) @ key.transpose(2, 3)
        if position_bias is not None:
            bias = position_bias[None]
            if self.gru_rel_pos:
                # Per query a gate in (0, ...) scales the shared bias, from two sigmoid units.
                gates = self.grep_linear(query).view(batch, self.heads, length, 2, 4).sum(-1)
                gate_a, gate_b = torch.sigmoid(gates).chunk(2, dim=-1)
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
            scores = scores + bias
        if key_padding is not None:
            scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).type_as(scores)
        attended = (weights @ value).transpose(1, 2).reshape(batch, length, dim)
        return self.out_proj(attended)


class _EncoderLayer(nn.Module):
    def __init__(self, config: BeatsConfig, has_bias_table: bool) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.self_attn = _Attention(config, has_bias_table)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation = _activation(config.activation_fn)
        self.layer_norm_first = config.layer_norm_first
        self.residual_scale = (2 * config.encoder_layers) ** 0.25 if config.deep_norm else 1.0

    def forward(
        self, x: torch.Tensor, key_padding: torch.Tensor | None, position_bias: torch.Tensor | None
    ) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.self_attn(self.self_attn_layer_norm(x), key_padding, position_bias)
            return x + self.fc2(self.activation(self.fc1(self.final_layer_norm(x))))
        x = x * self.residual_scale + self.self_attn(x, key_padding, position_bias)
        x = self.self_attn_layer_norm(x)
        x = x * self.residual_scale + self.fc2(self.activation(self.fc1(x)))
        return self.final_layer_norm(x)


class _Encoder(nn.Module):
    def __init__(self, config: BeatsConfig) -> None:
        super().__init__()
        dim = config.encoder_embed_dim
        self.pos_conv = nn.ModuleList(
            [_WeightNormConv1d(dim, config.conv_pos, config.conv_pos_groups)]
        )
        self.layer_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            _EncoderLayer(config, has_bias_table=index == 0 and config.relative_position_embedding)
            for index in range(config.encoder_layers)
        )
        self.config = config

    def position_bias(self, length: int, device: torch.device) -> torch.Tensor | None:
        """(heads, length, length) bias from the table of the first layer, shared by all."""
        if not self.config.relative_position_embedding:
            return None
        positions = torch.arange(length, device=device)
        buckets = relative_position_buckets(
            positions[None, :] - positions[:, None],
            self.config.num_buckets,
            self.config.max_distance,
        )
        return self.layers[0].self_attn.relative_attention_bias(buckets).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None) -> list[torch.Tensor]:
        if key_padding is not None:
            x = x.masked_fill(key_padding[..., None], 0.0)
        x = x + functional.gelu(self.pos_conv[0](x.transpose(1, 2))).transpose(1, 2)
        if not self.config.layer_norm_first:
            x = self.layer_norm(x)
        bias = self.position_bias(x.shape[1], x.device)
        outputs = []
        for layer in self.layers:
            x = layer(x, key_padding, bias)
            outputs.append(x)
        return outputs


class BeatsEncoder(nn.Module):
    """The BEATs encoder; parameter names follow the official checkpoint's state dict."""

    def __init__(self, config: BeatsConfig) -> None:
        super().__init__()
        patch = config.input_patch_size
        self.patch_embedding = nn.Conv2d(
            1, config.embed_dim, kernel_size=patch, stride=patch, bias=config.conv_bias
        )
        self.layer_norm = nn.LayerNorm(config.embed_dim)
        self.post_extract_proj = (
            nn.Linear(config.embed_dim, config.encoder_embed_dim)
            if config.embed_dim != config.encoder_embed_dim
            else None
        )
        self.encoder = _Encoder(config)
        self.config = config

    def normalised_fbank(self, waveform: torch.Tensor) -> torch.Tensor:
        """(frames, 128) normalised log mel of a waveform in [-1, 1], cut to whole patches."""
        fbank = kaldi_fbank(
            waveform * 2**15, SAMPLE_RATE, FBANK_BINS, FBANK_FRAME_MS, FBANK_SHIFT_MS
        )
        whole = fbank.shape[0] - fbank.shape[0] % self.config.input_patch_size
        return (fbank[:whole] - FBANK_MEAN) / (2 * FBANK_STD)

    def forward(self, waveforms: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
        """Every layer's tokens (batch, steps·patches, dim) and each waveform's number of steps."""
        fbanks = [self.normalised_fbank(waveform) for waveform in waveforms]
        patch = self.config.input_patch_size
        steps = [fbank.shape[0] // patch for fbank in fbanks]
        if min(steps) < 1:
            raise WordspaceError(
                f"BEATs needs at least {self.config.patch_window_samples} samples per utterance"
            )
        batch = nn.utils.rnn.pad_sequence(fbanks, batch_first=True)[:, None]
        dtype = self.patch_embedding.weight.dtype
        features = self.patch_embedding(batch.to(dtype))
        per_step = features.shape[3]
        features = features.flatten(2).transpose(1, 2)
        features = self.layer_norm(features)
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        key_padding = None
        if len(set(steps)) > 1:
            token_step = torch.arange(features.shape[1], device=features.device) // per_step
            key_padding = (
                token_step[None, :] >= torch.tensor(steps, device=features.device)[:, None]
            )
        return self.encoder(features, key_padding), steps


def read_beats_checkpoint(path: Path, weights: bool) -> tuple[BeatsConfig, dict[str, Any]]:
    """The config (and, if `weights`, the state dict) of a `{'cfg', 'model'}` checkpoint."""
    if not path.is_file():
        raise WordspaceError(f"BEATs checkpoint {path} does not exist; {INSTALL_HINT}")
    try:
        # mmap keeps a description cheap: only the pickle is read, tensors stay on disk.
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, OSError, ValueError) as error:
        raise WordspaceError(
            f"{path}: not a BEATs checkpoint ({error}); give the official BEATs .pt file"
        ) from error
    if not isinstance(checkpoint, dict) or not {"cfg", "model"} <= checkpoint.keys():
        raise WordspaceError(
            f"{path}: not a BEATs checkpoint (expected a dict with 'cfg' and 'model'); "
            "give the official BEATs .pt file"
        )
    config = BeatsConfig.from_dict(dict(checkpoint["cfg"]))
    return config, (checkpoint["model"] if weights else {})


def load_beats_state(model: BeatsEncoder, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load official weights; the shared bias table repeated under every layer is read once."""
    kept = {
        key: value
        for key, value in state.items()
        if not key.startswith("predictor")
        and not (key.endswith("relative_attention_bias.weight") and ".layers.0." not in key)
    }
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if missing or unexpected:
        names = ", ".join((missing + unexpected)[:3])
        raise WordspaceError(
            f"{path}: weights do not fit the BEATs architecture of its cfg ({names} ...); "
            "give an official BEATs checkpoint"
        )


class BeatsAdapter(AudioModelAdapter):
    """Every transformer layer of BEATs; a word pools the time steps (8 patches) it overlaps."""

    pooling = (
        "mean of the 8 frequency patches of each 160 ms time step, then mean of the time steps "
        "whose stride cell overlaps the word (see models/base.py)"
    )

    def __init__(self, checkpoint: str | Path, name: str | None = None) -> None:
        self.path = Path(checkpoint).expanduser()
        self.config, _ = read_beats_checkpoint(self.path, weights=False)
        self.name = name or f"beats:{self.path}"
        self.layer_names = [f"layer_{index}" for index in range(1, self.config.encoder_layers + 1)]
        self.dim = self.config.encoder_embed_dim
        self.source = str(self.path)
        self.checkpoint_path = str(self.path)
        self.geometry = FrameGeometry(
            SAMPLE_RATE, self.config.patch_hop_samples, self.config.patch_window_samples
        )
        self.model: BeatsEncoder | None = None
        self.device = torch.device("cpu")

    def load(self, device: str = "cpu", dtype: str = "float32") -> None:
        self.device = torch_device(device)
        _, state = read_beats_checkpoint(self.path, weights=True)
        model = BeatsEncoder(self.config)
        load_beats_state(model, state, self.path)
        self.model = model.to(self.device, torch_dtype(dtype)).eval()

    def frames(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        if self.model is None:
            raise WordspaceError(f"model {self.name} is not loaded; call load() first")
        minimum = self.config.patch_window_samples
        tensors = []
        for waveform in waveforms:
            # An utterance shorter than one time step is padded with silence to one step.
            samples = torch.as_tensor(waveform, dtype=torch.float32)
            tensors.append(functional.pad(samples, (0, max(0, minimum - len(samples)))))
        with torch.inference_mode():
            layers, steps = self.model([samples.to(self.device) for samples in tensors])
            tokens = torch.stack(layers, dim=0).float()
            n_layers, batch, n_tokens, dim = tokens.shape
            by_step = tokens.view(n_layers, batch, max(steps), n_tokens // max(steps), dim)
            step_means = by_step.mean(dim=3)
            return [step_means[:, index, :count].cpu().numpy() for index, count in enumerate(steps)]


register_path_prefix("beats", BeatsAdapter)
register(
    ModelEntry(
        name="beats-iter3",
        summary="BEATs iter3 (AudioSet), 12 layers of 768, 16×16 log-mel patches, 6.25 steps/s",
        build=lambda: BeatsAdapter(cache_root() / CHECKPOINT_NAME, name="beats-iter3"),
        install_hint=INSTALL_HINT,
    )
)
