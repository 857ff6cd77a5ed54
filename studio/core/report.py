"""A one-file HTML report of a session: the model, each run's recipe, the stage table and the
trade-off chart as an embedded image. No scripts, no external files: it opens anywhere."""

from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path

from .fileio import atomic_write_text

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; width: 100%; margin: .5em 0 1em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; } code { background: #f4f4f4; padding: 1px 4px; }
.warn { color: #a05a00; } .note { color: #666; font-size: .9em; } img { max-width: 100%; border: 1px solid #ddd; }
"""


def _fmt(value, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{value:.2%}"
    if kind == "bytes":
        return f"{value / 1024:,.1f} KiB"
    if kind == "ms":
        return f"{value:.3f}"
    return f"{value:,}"


def stage_rows(run) -> str:
    base = run.stages[0].measurement
    batches = sorted(base.latency_ms) if base and base.latency_ms else []
    head = ["stage", "quality", "parameters", "nonzeros", "file", "zipped", "x smaller (zip)", "MACs"]
    head += [f"ms, batch {b}" for b in batches] + [f"x faster, batch {b}" for b in batches]
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for s in run.stages:
        m = s.measurement
        if m is None:
            continue
        cells = [html.escape(s.label), _fmt(m.quality, "pct"), _fmt(m.parameters, "n"), _fmt(m.nonzeros, "n"),
                 _fmt(m.size_bytes, "bytes"), _fmt(m.zip_bytes, "bytes"), f"{base.zip_bytes / max(1, m.zip_bytes):.1f}x",
                 _fmt(m.macs, "n")]
        cells += [_fmt(m.latency_ms.get(b), "ms") for b in batches]
        cells += [f"{base.latency_ms[b] / m.latency_ms[b]:.2f}x" if m.latency_ms.get(b) else "–" for b in batches]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def render(runs, model_name: str, chart_png: bytes | None = None, source: str = "") -> str:
    parts = [f"<!doctype html><meta charset='utf-8'><title>Studio report: {html.escape(model_name)}</title>",
             f"<style>{STYLE}</style>", f"<h1>Compression report: {html.escape(model_name)}</h1>",
             f"<p class='note'>{html.escape(source)} · written {dt.datetime.now():%Y-%m-%d %H:%M} · "
             "quality on held-out data the passes never saw; sizes are the bytes of the ONNX file to ship and of "
             "its zip; latency is onnxruntime on the CPU, median of interleaved rounds.</p>"]
    if chart_png:
        data = base64.b64encode(chart_png).decode("ascii")
        parts.append(f"<h2>Trade-off</h2><img alt='trade-off chart' src='data:image/png;base64,{data}'>")
    for run in runs:
        steps = run.recipe.enabled_steps()
        recipe = " → ".join(html.escape(s.label()) for s in steps) or "(no passes)"
        parts.append(f"<h2>Run {html.escape(run.id)}</h2><p>Recipe: <code>{recipe}</code> · data: "
                     f"{html.escape(run.data_name)}</p>")
        parts.append(stage_rows(run))
        for s in run.stages:
            for w in s.warnings:
                parts.append(f"<p class='warn'>⚠ {html.escape(s.label)}: {html.escape(w)}</p>")
    return "\n".join(parts)


def write_html(path: str | Path, runs, chart_png: bytes | None = None, model_name: str = "model", source: str = "") -> Path:
    path = Path(path)
    atomic_write_text(path, render(runs, model_name, chart_png, source))
    return path
