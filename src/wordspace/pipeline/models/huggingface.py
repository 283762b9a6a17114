"""`hf:PATH_OR_ID`: any transformers folder (or cached model id), routed by its `model_type`."""

from __future__ import annotations

import json

from wordspace.errors import WordspaceError
from wordspace.pipeline.models.base import ModelAdapter
from wordspace.pipeline.models.registry import register_path_prefix
from wordspace.pipeline.models.speech import MODEL_TYPES as SPEECH_MODEL_TYPES
from wordspace.pipeline.models.speech import TransformersSpeechAdapter
from wordspace.pipeline.models.text import hf_model, resolve_hf_folder
from wordspace.pipeline.models.whisper import TransformersWhisperAdapter


def huggingface_model(spec: str) -> ModelAdapter:
    """The adapter for the folder's architecture: Whisper, a speech encoder, or a text encoder."""
    folder = resolve_hf_folder(spec)
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type", "")
    except (OSError, json.JSONDecodeError) as error:
        raise WordspaceError(
            f"hf:{spec}: not a transformers model folder ({folder / 'config.json'} is missing "
            "or unreadable); give a folder saved with transformers' save_pretrained"
        ) from error
    if model_type == "whisper":
        return TransformersWhisperAdapter(folder, f"hf:{spec}")
    if model_type in SPEECH_MODEL_TYPES:
        return TransformersSpeechAdapter(str(folder), name=f"hf:{spec}")
    return hf_model(spec)


register_path_prefix("hf", huggingface_model)
