"""A one-file HTML report of a session: the model, each run's recipe, the stage table and the
trade-off chart as an embedded image. No scripts, no external files: it opens anywhere."""

from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path

from .fileio import atomic_write_text
from .units import fmt_bytes

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
        return fmt_bytes(value)
    if kind == "ms":
        return f"{value:.3f}"
    return f"{value:,}"


def stage_rows(run) -> str:
    from . import stage_table

    cols = stage_table.columns(run)
    rows = ["<tr>" + "".join(f"<th>{html.escape(c.title)}</th>" for c in cols) + "</tr>"]
    for stage, row in zip(run.stages, stage_table.rows(run)):
        if stage.measurement is not None:
            cells = [row.get(c.key, stage_table.Cell(stage_table.NONE, None)).text for c in cols]
            rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    lines = stage_table.notes(run)
    lines = lines[:1] + lines[2:]  # the page's header says how onnxruntime latency is timed; other runtimes and RAM here
    notes = "".join(f"<p class='note'>{html.escape(line)}</p>" for line in lines)
    return "<table>" + "".join(rows) + "</table>" + notes + detail_rows(run)


def detail_rows(run) -> str:
    """Per stage: macro precision/recall/F1 where there are labels, and each output's fidelity
    to the original (cosine, SNR, max abs error) where the model has several outputs or its
    outputs are not class scores."""
    from .evaluate import SNR_CAP_DB

    measured = [s for s in run.stages if s.measurement is not None]
    parts = []
    if any(s.measurement.f1 is not None for s in measured):
        rows = ["<tr><th>stage</th><th>precision (macro)</th><th>recall (macro)</th><th>F1 (macro)</th></tr>"]
        for s in measured:
            m = s.measurement
            rows.append(f"<tr><td>{html.escape(s.label)}</td><td>{_fmt(m.precision, 'pct')}</td>"
                        f"<td>{_fmt(m.recall, 'pct')}</td><td>{_fmt(m.f1, 'pct')}</td></tr>")
        parts.append("<table>" + "".join(rows) + "</table>")
    outputs = list(measured[0].measurement.fidelity) if measured else []
    if outputs and (len(outputs) > 1 or not measured[0].measurement.classifier):
        rows = ["<tr><th>stage</th><th>output</th><th>cosine</th><th>SNR (dB)</th><th>max abs error</th></tr>"]
        for s in measured:
            for name, f in s.measurement.fidelity.items():
                cells = [f"{f[k]:.4f}" if k == "cosine" and f.get(k) is not None else
                         "exact" if k == "snr_db" and f.get(k) is not None and f[k] >= SNR_CAP_DB else
                         f"{f[k]:.1f}" if k == "snr_db" and f.get(k) is not None else
                         f"{f[k]:.3g}" if f.get(k) is not None else "–" for k in ("cosine", "snr_db", "max_abs")]
                rows.append(f"<tr><td>{html.escape(s.label)}</td><td>{html.escape(name)}</td>"
                            + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append("<p>Output fidelity against the original model, per output:</p><table>" + "".join(rows) + "</table>")
    return "".join(parts) + tries_rows(run)


def tries_rows(run) -> str:
    """Per stage whose pass tried variants (INT8 remedies): each try, what it changed and what
    it measured against the stage before, on the pass's own split; the kept one marked."""
    parts = []
    for s in run.stages:
        if len(s.tries) < 2:
            continue
        rows = ["<tr><th>try</th><th>change</th><th>setting</th><th>measured</th><th>ms, batch 1</th><th>kept</th></tr>"]
        for t in s.tries:
            score = (f"failed: {t.get('error', '')}" if t["score"] is None else f"{t['score']:.2%}"
                     if t["measure"].startswith("top-1 agreement") else f"{t['score']:.4f}")
            latency = _fmt(t.get("latency_ms"), "ms")
            rows.append(f"<tr><td>{t['try']}</td><td>{html.escape(t['change'])}</td><td>{html.escape(t['config'])}</td>"
                        f"<td>{html.escape(t['measure'])} {score}</td><td>{latency}</td><td>{'yes' if t['kept'] else ''}</td></tr>")
        parts.append(f"<p>{html.escape(s.label)}: variants tried, each against the stage before on the pass's own "
                     "split of the training data:</p><table>" + "".join(rows) + "</table>")
    return "".join(parts)


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
