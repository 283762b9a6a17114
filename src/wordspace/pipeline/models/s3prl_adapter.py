"""wav2vec 2.0-family upstreams through s3prl (an optional extra; the study extracted this way).

`s3prl:UPSTREAM` or `s3prl:UPSTREAM=/path/to/checkpoint.pt` builds `s3prl.nn.S3PRLUpstream`
(UPSTREAM is an s3prl hub name such as wav2vec2, hubert, wavlm_base_plus or data2vec). s3prl
puts its upstream back in training mode after probing it, so the adapter calls `eval()` itself.

s3prl 0.4.18 imports torchaudio, and torchaudio has no build for wordspace's torch 2.13.0 (the
newest, 2.11.0, is built for CUDA torch 2.11 and its library does not load beside torch 2.13 on
CPU); s3prl then works only in an environment with a matching torch/torchaudio pair.

Frames: s3prl pads every layer to ceil(N / 320) frames by repeating the last one; the adapter
keeps the model's real frames only, floor((N − 400) / 320) + 1 (the wav2vec 2.0 conv stack).
Utterances run one by one (base models use group norm: padding would change them).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.base import AudioModelAdapter, FrameGeometry
from wordspace.pipeline.models.devices import torch_device, torch_dtype
from wordspace.pipeline.models.registry import register_path_prefix

SAMPLE_RATE = 16000
FAMILIES = ("wav2vec2", "hubert", "wavlm", "data2vec")
BASE_HIDDEN_STATES, BASE_DIM = 13, 768
GEOMETRY = FrameGeometry(sample_rate=SAMPLE_RATE, hop=320, window=400)
INSTALL_HINT = (
    "s3prl needs a torchaudio built for the same torch (e.g. torch 2.11.0 with torchaudio "
    "2.11.0, then pip install s3prl==0.4.18), which wordspace's torch 2.13.0 does not have; "
    "use speech:FOLDER with a transformers checkpoint instead"
)


def _s3prl_nn() -> Any:
    try:
        return importlib.import_module("s3prl.nn")
    except (ImportError, OSError) as error:
        raise WordspaceError(f"s3prl does not import here ({error}); {INSTALL_HINT}") from error


class S3prlAdapter(AudioModelAdapter):
    """Every hidden state of a base-size wav2vec 2.0-family s3prl upstream."""

    def __init__(self, spec: str) -> None:
        upstream, _, checkpoint = spec.partition("=")
        if not upstream.startswith(FAMILIES):
            raise WordspaceError(
                f"s3prl:{spec}: only the {', '.join(FAMILIES)} upstreams are supported "
                "(their frame geometry is the wav2vec 2.0 conv stack)"
            )
        _s3prl_nn()
        self.upstream_name = upstream
        self.checkpoint_path = checkpoint or None
        self.name = f"s3prl:{spec}"
        self.layer_names = [f"layer_{index}" for index in range(BASE_HIDDEN_STATES)]
        self.dim = BASE_DIM
        self.source = f"s3prl upstream {upstream}" + (f" from {checkpoint}" if checkpoint else "")
        self.geometry = GEOMETRY
        self.model: Any = None
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def load(self, device: str = "cpu", dtype: str = "float32") -> None:
        self.device, self.dtype = torch_device(device), torch_dtype(dtype)
        try:
            model = _s3prl_nn().S3PRLUpstream(self.upstream_name, path_or_url=self.checkpoint_path)
        except WordspaceError:
            raise
        except Exception as error:  # s3prl raises whatever its hub entry raises
            raise WordspaceError(
                f"{self.name}: the s3prl upstream did not load ({error})"
            ) from error
        if model.num_layers != BASE_HIDDEN_STATES or set(model.hidden_sizes) != {BASE_DIM}:
            raise WordspaceError(
                f"{self.name}: {model.num_layers} hidden states of {model.hidden_sizes[0]}, not a "
                f"base model's {BASE_HIDDEN_STATES} of {BASE_DIM}; use speech:FOLDER for it"
            )
        self.model = model.to(self.device, self.dtype).eval()

    def frames(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        if self.model is None:
            raise WordspaceError(f"model {self.name} is not loaded; call load() first")
        results = []
        with torch.inference_mode():
            for waveform in waveforms:
                samples = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
                samples = torch.nn.functional.pad(
                    samples, (0, max(0, GEOMETRY.window - len(samples)))
                )
                n_frames = (len(samples) - GEOMETRY.window) // GEOMETRY.hop + 1
                hidden, _ = self.model(
                    samples[None].to(self.device, self.dtype), torch.tensor([len(samples)])
                )
                stacked = torch.stack([layer[0, :n_frames] for layer in hidden])
                results.append(stacked.float().cpu().numpy())
        return results


register_path_prefix("s3prl", S3prlAdapter)
