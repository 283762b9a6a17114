"""wordspace's cache folder, and building a folder in it atomically (readers never see half)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """`$WORDSPACE_CACHE`, or `~/.cache/wordspace`."""
    configured = os.environ.get("WORDSPACE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "wordspace"


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, built by `build(tmp_folder)` unless it exists; the folder appears whole or not.

    Concurrent builders (several workers) each build in their own temporary folder; the first
    rename wins and the others discard theirs.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(scratch)
        scratch.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            os.rename(scratch, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return target
