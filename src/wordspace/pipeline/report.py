"""The report: one self-contained HTML page (figures embedded as data URIs, no network) plus each
figure as PNG and SVG, covering the corpus, the models and their provenance, the comparisons'
headline results and every analysis stored, each figure with a one-line reading."""

from __future__ import annotations

import base64
import hashlib
import html
import inspect
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import xarray as xr
from dask.system import CPU_COUNT

import wordspace
from wordspace.pipeline.analyses import (
    ANALYSES,
    figure_stem,
    heatmaps,
    plot_results,
    retrieval_errors,
    stored_results,
)
from wordspace.pipeline.analyses import common as analyses_common
from wordspace.pipeline.analyses.common import METRIC_LABELS, texts
from wordspace.storage import store

TITLES = {
    "layer_curves": "Layer curves",
    "stability": "Stability with data size",
    "heatmaps": "Layer × layer heatmaps",
    "asif": "ASIF retrieval and its (k, p) table",
    "retrieval_errors": "Retrieval errors",
    "phonetic_semantic": "Phonetic versus semantic neighbours",
}
GRID_DIMS = ("layer_a", "layer_b")


@dataclass(frozen=True)
class Headline:
    """The best layer pair of one metric in one stored comparison."""

    model_a: str
    model_b: str
    metric: str
    layer_a: str
    layer_b: str
    value: float


HEADLINE_METRICS = ("cka", "cka_debiased", "cca", "asif_top1", "asif_top5")


def headlines(url: str | os.PathLike) -> list[Headline]:
    """Best layer pair and value of every (layer_a, layer_b) metric of every comparison."""
    rows = []
    for name in store.list_groups(url, "comparisons"):
        model_a, _, model_b = name.partition("__")
        results = store.read_comparison(url, model_a, model_b)
        if results is None:
            continue
        for metric in HEADLINE_METRICS:
            if metric not in results:
                continue
            values = results[metric]
            # ASIF accuracies also vary with (k, p): the headline is the best setting's.
            values = values.max([dim for dim in values.dims if dim not in GRID_DIMS])
            values = values.transpose(*GRID_DIMS)
            if not np.isfinite(values.values).any():
                continue
            n_a, n_b = values.shape
            i, j = heatmaps.best_pair(values, model_a == model_b and n_a == n_b > 1)
            rows.append(
                Headline(
                    model_a,
                    model_b,
                    str(metric),
                    str(values["layer_a"].values[i]),
                    str(values["layer_b"].values[j]),
                    float(values.values[i, j]),
                )
            )
    return rows


def format_headlines(rows: list[Headline]) -> str:
    """The headline results as a plain-text table."""
    header = ("model A", "model B", "metric", "best layer pair", "value")
    lines = [header] + [
        (r.model_a, r.model_b, r.metric, f"{r.layer_a} × {r.layer_b}", f"{r.value:.3f}")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines
    )


def corpus_summary(url: str | os.PathLike) -> dict[str, str]:
    """Counts that describe the corpus of the store."""
    table = store.open_word_table(url)
    text = texts(table["text"].values)
    seconds = float((table["end"] - table["start"]).sum())
    summary = {
        "word tokens": f"{len(text):,}",
        "word types": f"{len(np.unique(text)):,}",
        "utterances": f"{len(np.unique(texts(table['utterance'].values))):,}",
        "speakers": f"{len(np.unique(texts(table['speaker'].values))):,}",
        "speech in words": f"{seconds / 60:.1f} min",
    }
    if "gender" in table.coords:
        genders, counts = np.unique(texts(table["gender"].values), return_counts=True)
        summary["tokens by gender"] = ", ".join(
            f"{g or '?'} {c:,}" for g, c in zip(genders, counts, strict=True)
        )
    corpus = store.root_attrs(url).get("corpus_root") or store.root_attrs(url).get("corpus")
    if corpus:
        summary["corpus"] = str(corpus)
    return summary


def model_rows(url: str | os.PathLike) -> list[dict[str, str]]:
    """Each extracted model with its provenance."""
    rows = []
    for model in store.list_groups(url, "models"):
        attrs = store.model_attrs(url, model)
        embedding = store.open_embedding(url, model)
        layers = [str(v) for v in embedding["layer"].values]
        versions = attrs.get("package_versions") or {}
        sha = attrs.get("checkpoint_sha256") or ""
        rows.append(
            {
                "model": model,
                "modality": str(attrs.get("modality", "?")),
                "layers": f"{len(layers)} ({layers[0]} … {layers[-1]})"
                if len(layers) > 1
                else layers[0],
                "dim": str(embedding.sizes["dim"]),
                "source": str(attrs.get("source") or attrs.get("model") or "?"),
                "weights": f"{attrs.get('checkpoint_path') or '—'}"
                + (f" (sha256 {sha[:12]}…)" if sha else ""),
                "pooling": str(attrs.get("pooling") or "—"),
                "missing words": str(attrs.get("n_missing_words", attrs.get("missing_words", "—"))),
                "software": ", ".join(
                    f"{k} {v}" for k, v in versions.items() if k in ("torch", "transformers")
                )
                or "—",
                "extracted": str(attrs.get("created", "—")),
            }
        )
    return rows


def _table(header: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _figure(png: Path, svg: Path, reading: str, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode()
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
        f'<figcaption><p class="reading">{html.escape(reading)}</p>'
        f'<p class="files">{html.escape(caption)} · <a href="figures/{png.name}">PNG</a> · '
        f'<a href="figures/{svg.name}">SVG</a></p></figcaption></figure>'
    )


def _extra(name: str, results: xr.Dataset) -> str:
    if name != retrieval_errors.NAME or not results.sizes.get("missed_word"):
        return ""
    header = ["word", *map(str, results["model"].values)]
    note = (
        '<p class="note">† never among the anchors. Words missed by every model; what each '
        "retrieved in its top 5, and how often.</p>"
    )
    return _table(header, retrieval_errors.table_rows(results), "errors") + note


def figure_digest(name: str, results: xr.Dataset) -> str:
    """Fingerprint of what a figure is drawn from: the stored results and the plotting code."""
    digest = hashlib.sha256()
    for module in (ANALYSES[name], analyses_common):
        digest.update(inspect.getsource(module).encode())
    digest.update(repr(sorted(results.attrs.items())).encode())
    for variable_name, variable in sorted(results.variables.items()):
        values = np.asarray(variable.values)
        digest.update(f"{variable_name}{variable.dims}{values.dtype}{values.shape}".encode())
        if values.dtype.kind in "OUS":
            digest.update("\x1f".join(map(str, values.ravel())).encode())
        else:
            digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def draw_figures(
    entries: list[tuple[str, str, xr.Dataset]], figures_dir: Path
) -> dict[tuple[str, str], tuple[Path, Path]]:
    """PNG and SVG of each (analysis, key, results); a figure whose inputs are unchanged since it
    was drawn (same digest, beside it as `<stem>.digest`) is kept, the others are drawn in
    parallel processes."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths, stale = {}, []
    for name, key, results in entries:
        stem = figure_stem(name, key)
        png, svg, mark = (figures_dir / f"{stem}.{kind}" for kind in ("png", "svg", "digest"))
        digest = figure_digest(name, results)
        paths[name, key] = (png, svg)
        if not (png.exists() and svg.exists() and mark.exists() and mark.read_text() == digest):
            mark.unlink(missing_ok=True)
            stale.append((name, key, results, figures_dir, mark, digest))
    workers = min(len(stale), CPU_COUNT)
    if workers > 1:
        # fork: the children start with matplotlib and the analyses already imported.
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            list(pool.map(_draw, stale))
    else:
        for job in stale:
            _draw(job)
    return paths


def _draw(job: tuple[str, str, xr.Dataset, Path, Path, str]) -> None:
    name, key, results, figures_dir, mark, digest = job
    plot_results(name, key, results, figures_dir)
    mark.write_text(digest)


def write_report(url: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write `index.html` and `figures/*.png|svg` into `out_dir`; returns the page's path."""
    url = str(url)
    out = Path(out_dir)
    summary = corpus_summary(url)
    models = model_rows(url)
    best = headlines(url)
    stored = stored_results(url)
    figures = draw_figures(stored, out / "figures")
    sections, toc = [], []
    for name in ANALYSES:
        entries = [(key, results) for n, key, results in stored if n == name]
        if not entries:
            continue
        blocks = []
        for key, results in entries:
            png, svg = figures[name, key]
            blocks.append(
                _figure(png, svg, ANALYSES[name].reading(results), key.replace("__", " vs "))
                + _extra(name, results)
            )
        toc.append(f'<a href="#{name}">{html.escape(TITLES[name])}</a>')
        sections.append(
            f'<section id="{name}"><h2>{html.escape(TITLES[name])}</h2>'
            + "".join(blocks)
            + "</section>"
        )
    headline_html = (
        _table(
            ["model A", "model B", "metric", "best layer pair", "value"],
            [
                [
                    r.model_a,
                    r.model_b,
                    METRIC_LABELS.get(r.metric, r.metric),
                    f"{r.layer_a} × {r.layer_b}",
                    f"{r.value:.3f}",
                ]
                for r in best
            ],
            "numbers",
        )
        if best
        else '<p class="note">No comparisons stored yet (run <code>wordspace compare</code>).</p>'
    )
    if not sections:
        sections.append(
            '<section><p class="note">No analyses stored yet (run '
            "<code>wordspace analyze NAME STORE</code>).</p></section>"
        )
    page = _PAGE.format(
        title=html.escape(f"wordspace report — {Path(url.rstrip('/')).name}"),
        store=html.escape(url),
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        version=wordspace.__version__,
        toc=" ".join(
            [
                '<a href="#corpus">Corpus</a>',
                '<a href="#models">Models</a>',
                '<a href="#headlines">Headline results</a>',
                *toc,
            ]
        ),
        summary="".join(
            f"<div class='stat'><span>{html.escape(v)}</span>{html.escape(k)}</div>"
            for k, v in summary.items()
        ),
        models=_table(list(models[0]), [list(r.values()) for r in models], "models")
        if models
        else '<p class="note">No models extracted yet.</p>',
        headlines=headline_html,
        sections="".join(sections),
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
:root {{ --ink:#1d2733; --muted:#5b6776; --line:#dfe4ea; --accent:#2f6db5; --bg:#f5f7fa; }}
* {{ box-sizing:border-box; }}
body {{ margin:0; font:15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       color:var(--ink); background:var(--bg); }}
header {{ background:#14263d; color:#fff; padding:28px 40px 18px; }}
header h1 {{ margin:0 0 4px; font-size:26px; font-weight:600; }}
header p {{ margin:0; color:#b8c6d8; font-size:13px; }}
nav {{ position:sticky; top:0; z-index:1; background:#fff; border-bottom:1px solid var(--line);
      padding:10px 40px; font-size:13px; }}
nav a {{ color:var(--accent); text-decoration:none; margin-right:18px; white-space:nowrap; }}
main {{ max-width:1240px; margin:0 auto; padding:10px 40px 60px; }}
section {{ background:#fff; border:1px solid var(--line); border-radius:8px; padding:6px 26px 20px;
          margin:22px 0; }}
h2 {{ font-size:19px; font-weight:600; border-bottom:1px solid var(--line); padding-bottom:8px; }}
.stats {{ display:flex; flex-wrap:wrap; gap:14px; }}
.stat {{ border:1px solid var(--line); border-radius:6px; padding:10px 16px; min-width:140px;
        color:var(--muted); font-size:12px; }}
.stat span {{ display:block; color:var(--ink); font-size:20px; font-weight:600; }}
table {{ border-collapse:collapse; width:100%; font-size:13px; margin:8px 0; }}
th, td {{ text-align:left; padding:6px 10px; border-bottom:1px solid var(--line);
          vertical-align:top; }}
th {{ background:#f0f3f7; font-weight:600; }}
table.numbers td:last-child {{ text-align:right; font-variant-numeric:tabular-nums; }}
table.models td {{ word-break:break-word; }}
figure {{ margin:18px 0 26px; }}
figure img {{ max-width:100%; height:auto; display:block; margin:0 auto; }}
figcaption {{ margin-top:6px; }}
.reading {{ margin:0; font-weight:500; border-left:3px solid var(--accent); padding-left:10px; }}
.files, .note {{ margin:4px 0 0; color:var(--muted); font-size:12px; }}
.files a {{ color:var(--accent); }}
footer {{ text-align:center; color:var(--muted); font-size:12px; padding:20px; }}
</style></head>
<body>
<header><h1>wordspace report</h1>
<p>store {store} · generated {created} · wordspace {version}</p></header>
<nav>{toc}</nav>
<main>
<section id="corpus"><h2>Corpus</h2><div class="stats">{summary}</div></section>
<section id="models"><h2>Models and provenance</h2>{models}</section>
<section id="headlines"><h2>Headline results</h2>{headlines}</section>
{sections}
</main>
<footer>Made by wordspace: linear CKA, CCA and ASIF, layer by layer.</footer>
<script>
window.addEventListener("load", function () {{
  var images = document.querySelectorAll("figure img"), loaded = 0;
  images.forEach(function (img) {{
    var ok = img.complete && img.naturalWidth > 0;
    img.setAttribute("data-loaded", ok ? "yes" : "no");
    if (ok) loaded += 1;
  }});
  document.body.setAttribute("data-figures", images.length + ":" + loaded);
}});
</script>
</body></html>
"""
