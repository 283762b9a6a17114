"""Imports every adapter module so that each registers its models (one import line per module)."""

from wordspace.pipeline.models import (
    acoustic,  # noqa: F401
    beats,  # noqa: F401
    bundled,  # noqa: F401
    encodecmae,  # noqa: F401
    huggingface,  # noqa: F401
    s3prl_adapter,  # noqa: F401
    speech,  # noqa: F401
    static,  # noqa: F401
    text,  # noqa: F401
    whisper,  # noqa: F401
)
