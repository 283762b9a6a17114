"""Randomly initialised speech models and BEATs through the whole extraction engine, and an
extraction really interrupted (its process killed) and then resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from test_models_beats import TINY_CFG, official_state, random_encoder
from test_models_speech import save_tiny

from wordspace import open_store
from wordspace.pipeline.extract import extract_model
from wordspace.pipeline.index import index_corpus
from wordspace.pipeline.models.base import Utterance
from wordspace.pipeline.models.registry import build_model
from wordspace.storage import store as st

TESTS = Path(__file__).parent


def model_specs(root: Path) -> dict[str, str]:
    specs = {kind: f"speech:{save_tiny(root / kind, kind)}" for kind in ("wav2vec2", "hubert")}
    specs["wavlm"] = f"speech:{save_tiny(root / 'wavlm', 'wavlm')}"
    beats = root / "BEATs_tiny.pt"
    torch.save({"cfg": TINY_CFG, "model": official_state(random_encoder())}, beats)
    specs["beats"] = f"beats:{beats}"
    return specs


def test_random_speech_models_and_beats_extract(indexed, small_corpus, client, tmp_path):
    words = open_store(indexed).words
    first = np.flatnonzero(words.utterance.values == "1001-10-0000")
    for kind, spec in model_specs(tmp_path / "models").items():
        extract_model(indexed, spec, name=kind, client=client, progress=False)
        embedding = open_store(indexed).embedding(kind)
        adapter = build_model(spec)
        assert embedding.sizes["layer"] == len(adapter.layer_names), kind
        values = embedding.values
        assert not np.isnan(values).any(), kind
        # The stored rows are the adapter's own pooled vectors for that utterance.
        adapter.load("cpu")
        waveform, _ = _audio(small_corpus, "1001-10-0000", adapter.geometry.sample_rate)
        direct = adapter.embed(
            [Utterance("1001-10-0000", list(words.text.values[first]),
                       words.start.values[first], words.end.values[first], "", waveform)]
        )[0]  # fmt: skip
        np.testing.assert_allclose(values[:, first], direct, rtol=1e-4, atol=1e-5, err_msg=kind)
        assert embedding.attrs["frame_rate"] == adapter.geometry.frame_rate


def _audio(fixture, utterance_id: str, rate: int):
    from wordspace.pipeline.audio import load_audio

    speaker, chapter, _ = utterance_id.split("-")
    return load_audio(fixture.corpus / speaker / chapter / f"{utterance_id}.flac", rate)


EXTRACT_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import cluster_model  # registers the slow test model
from distributed import Client, LocalCluster
from wordspace.pipeline.extract import extract_model
cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False)
with cluster, Client(cluster) as client:
    extract_model({url!r}, "hashed-words", block_words=4, client=client, progress=False)
"""


def test_killed_extraction_resumes_to_the_uninterrupted_result(indexed, small_corpus, tmp_path):
    reference_url = str(tmp_path / "reference.zarr")
    index_corpus(small_corpus.corpus, small_corpus.alignments, reference_url)
    script = EXTRACT_SCRIPT.format(tests=str(TESTS), url=indexed)
    environment = {**os.environ, "WORDSPACE_TEST_MODEL_SECONDS": "1.5"}
    process = subprocess.Popen([sys.executable, "-c", script], env=environment)
    try:
        deadline = time.monotonic() + 120
        # Kill it once some blocks, not all, are complete.
        while time.monotonic() < deadline:
            try:
                done = 4 - len(st.incomplete_blocks(indexed, "hashed-words"))
            except Exception:  # the group does not exist yet
                done = 0
            if 1 <= done < 4:
                break
            assert process.poll() is None, "the extraction ended before it could be interrupted"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        process.kill()
    left = st.incomplete_blocks(indexed, "hashed-words")
    assert 0 < len(left) < 4
    subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "WORDSPACE_TEST_MODEL_SECONDS": "0"},
        check=True,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-c", EXTRACT_SCRIPT.format(tests=str(TESTS), url=reference_url)],
        check=True,
    )  # fmt: skip
    resumed = open_store(indexed).embedding("hashed-words").values
    reference = open_store(reference_url).embedding("hashed-words").values
    np.testing.assert_array_equal(resumed, reference)
    assert not np.isnan(resumed).any()
