"""Device and dtype names as users give them (`--device`, `--dtype`), checked, as torch objects."""

from __future__ import annotations

import torch

from wordspace.errors import WordspaceError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_device(device: str) -> torch.device:
    """`device` ("cpu", "cuda", "cuda:1"), if this machine has it."""
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise WordspaceError(
            f"--device {device!r} is not a device name; use cpu or cuda"
        ) from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise WordspaceError(
                f"--device {device!r}: no CUDA GPU is visible to torch here; use --device cpu"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise WordspaceError(
                f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    elif resolved.type != "cpu":
        raise WordspaceError(f"--device {device!r} is not supported; use cpu or cuda")
    return resolved


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype named `dtype` (float32, float16 or bfloat16)."""
    if dtype not in DTYPES:
        raise WordspaceError(f"--dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]
