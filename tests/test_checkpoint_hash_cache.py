"""The checkpoint checksum is read once per version of the file and remembered in the cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from wordspace.pipeline.models.cache import file_key, file_sha256


def test_sha256_is_remembered_and_recomputed_when_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORDSPACE_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"first version")
    assert file_sha256(weights) == hashlib.sha256(b"first version").hexdigest()
    memo = tmp_path / "cache" / "sha256" / file_key(weights)
    assert memo.read_text() == hashlib.sha256(b"first version").hexdigest()
    # The remembered value is what is returned: the file is not read again.
    memo.write_text("0" * 64)
    assert file_sha256(weights) == "0" * 64
    # Another version of the file (size or mtime differ) has another key: hashed afresh.
    weights.write_bytes(b"second version!")
    os.utime(weights, ns=(1, 1))
    assert file_sha256(weights) == hashlib.sha256(b"second version!").hexdigest()
    # A damaged memo is ignored.
    (tmp_path / "cache" / "sha256" / file_key(weights)).write_text("garbage")
    assert file_sha256(weights) == hashlib.sha256(b"second version!").hexdigest()
