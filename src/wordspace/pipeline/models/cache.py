"""wordspace's cache folder, building a folder in it atomically (readers never see half), and
file checksums remembered there."""

from __future__ import annotations

import hashlib
import os
import re
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


def file_key(path: Path) -> str:
    """A hex digest that names one version of a file: its resolved path, size and mtime."""
    resolved = path.resolve()
    stat = resolved.stat()
    return hashlib.sha256(f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read once per version of the file (see `file_key`) and remembered in
    the cache folder: a checkpoint of hundreds of MB is not read again on every run."""
    memo = cache_root() / "sha256" / file_key(path)
    try:
        remembered = memo.read_text().strip()
    except OSError:
        remembered = ""
    if re.fullmatch(r"[0-9a-f]{64}", remembered):
        return remembered
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 24):
            digest.update(chunk)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        scratch = memo.with_name(f".{memo.name}.{os.getpid()}")
        scratch.write_text(digest.hexdigest())
        os.replace(scratch, memo)
    except OSError:
        pass  # a read-only cache folder only means hashing again next time
    return digest.hexdigest()
