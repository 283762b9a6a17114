"""The report: every analysis on a small store, then the page checked in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import PHONES, build_corpus

from wordspace.cli import ANALYSIS_NAMES, main
from wordspace.metrics import similarity_grid
from wordspace.pipeline.analyses import ANALYSES, run_study
from wordspace.pipeline.index import index_corpus
from wordspace.pipeline.report import format_headlines, headlines
from wordspace.storage import store
from wordspace.storage.analyses import list_analyses, read_analysis

VOCABULARY = sorted(PHONES)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def _write_model(url, name, layers, values, modality):
    n_words = values.shape[1]
    block = store.words_per_block(n_words)
    store.create_embedding(
        url, name, layer_names=layers, n_words=n_words, dim=values.shape[2], dtype="float32",
        block_words=block, attrs={"model": name, "modality": modality, "source": "synthetic"},
    )  # fmt: skip
    for index, (start, stop) in enumerate(store.block_bounds(url, name)):
        store.write_embedding_block(url, name, index, values[:, start:stop])


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    """A 300-token store with a static text model and an audio model whose layer `mid` is
    planted to match it; every analysis run, one comparison stored."""
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    utterances = [
        (f"{1001 + s}", "10", f"{u:04d}", list(rng.choice(VOCABULARY, 5)))
        for s in range(4)
        for u in range(15)
    ]
    fixture = build_corpus(root, utterances)
    url = str(root / "store.zarr")
    index_corpus(fixture.corpus, fixture.alignments, url)
    words = store.open_word_table(url)["text"].values
    types = np.array([VOCABULARY.index(w) for w in words])
    base = rng.standard_normal((len(VOCABULARY), 6))
    text = base[types][None]
    audio = np.stack(
        [w * text[0] @ np.eye(6)[::-1] + (1 - w) * rng.standard_normal(text[0].shape)
         for w in (0.1, 0.85, 0.3)]
    )  # fmt: skip
    _write_model(url, "glove-mini", ["vectors"], text.astype(np.float32), "static")
    _write_model(url, "speechy", ["conv", "mid", "top"], audio.astype(np.float32), "audio")
    grid = similarity_grid(
        store.open_embedding(url, "speechy"), store.open_embedding(url, "glove-mini")
    )
    store.write_comparison(url, "speechy", "glove-mini", grid)
    lines = []
    run_study(url, n_boot=5, progress=lines.append)
    return url, lines


def test_run_study_stores_every_analysis_and_skips_what_is_stored(study_store):
    url, lines = study_store
    assert set(list_analyses(url)) == set(ANALYSES)
    curves = read_analysis(url, "layer_curves", "speechy__glove-mini")
    assert (
        str(curves["layer"].values[int(np.argmax(curves["value"].sel(metric="cka").values))])
        == "mid"
    )
    assert read_analysis(url, "asif", "speechy__glove-mini").attrs["best_layer_a"] == "mid"
    assert all("/" in line and ":" in line for line in lines)
    again = []
    run_study(url, n_boot=5, progress=again.append)
    assert all(line.endswith("stored already") for line in again)


def test_headlines_name_the_best_pair(study_store):
    url, _ = study_store
    rows = {row.metric: row for row in headlines(url)}
    assert rows["cka"].layer_a == "mid" and rows["cka"].layer_b == "vectors"
    assert "mid × vectors" in format_headlines(list(rows.values()))


def test_analyze_command_prints_a_reading_and_writes_figures(study_store, tmp_path, capsys):
    url, _ = study_store
    code = main(["analyze", "heatmaps", url, "--a", "speechy", "--b", "glove-mini",
                 "--metrics", "cka,cca", "--figures", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "peaks at speechy layer mid" in out
    assert (tmp_path / "heatmaps__speechy__glove-mini.svg").exists()
    assert main(["analyze", "asif", url, "--a", "speechy"]) == 2
    assert "--b" in capsys.readouterr().err


def test_the_command_line_knows_every_analysis_without_importing_them():
    assert tuple(ANALYSES) == ANALYSIS_NAMES
    probe = (
        "import sys; from wordspace.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('xarray', 'wordspace.pipeline.analyses') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded.stderr


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_report_page_loads_every_figure_in_headless_chromium(study_store, tmp_path):
    url, _ = study_store
    out = tmp_path / "report"
    assert main(["report", url, "--out", str(out)]) == 0
    page = out / "index.html"
    html = page.read_text()
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) == len(list((out / "figures").glob("*.svg"))) >= len(ANALYSES)
    assert html.count("<img ") == len(pngs)
    assert "http://" not in html and "https://" not in html
    for heading in ("Corpus", "Models and provenance", "Headline results", "Retrieval errors"):
        assert heading in html
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not found on PATH (Debian: apt-get install chromium)")
    shot = tmp_path / "report.png"
    dom = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1400,2400", f"--screenshot={shot}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    match = re.search(r'<body[^>]*data-figures="(\d+):(\d+)"', dom)
    assert match, "the page's load script did not run"
    assert int(match[1]) == int(match[2]) == len(pngs)
    assert dom.count('data-loaded="yes"') == len(pngs)
    assert shot.stat().st_size > 10_000


def test_report_redraws_only_the_figures_whose_results_changed(study_store, tmp_path):
    from wordspace.pipeline.report import write_report
    from wordspace.storage.analyses import write_analysis

    url, _ = study_store
    out = tmp_path / "report"
    write_report(url, out)
    drawn = {path.name: path.stat().st_mtime_ns for path in (out / "figures").glob("*.png")}
    write_report(url, out)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "figures").glob("*.png")} == drawn
    changed = read_analysis(url, "heatmaps", "speechy")
    write_analysis(url, "heatmaps", "speechy", changed.assign(cka=changed["cka"] * 0.5))
    try:
        write_report(url, out)
    finally:
        write_analysis(url, "heatmaps", "speechy", changed)
    again = {p.name: p.stat().st_mtime_ns for p in (out / "figures").glob("*.png")}
    assert [name for name in drawn if again[name] != drawn[name]] == ["heatmaps__speechy.png"]
