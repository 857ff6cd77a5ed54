"""The stage table, once: every stage's numbers, formatted here for every face that shows them
(the command line's text table, the HTML report, the window's Results view). Ratios are against
the run's original (stage 0): x smaller (zipped), x faster (per batch size)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .memory import RUNS as RAM_RUNS
from .units import fmt_bytes

NONE = "–"


@dataclass(frozen=True)
class Column:
    key: str
    title: str  # the HTML report's and the window's header
    short: str  # the text table's header
    width: int  # the text table's width


@dataclass(frozen=True)
class Cell:
    text: str
    value: Any  # what a sort uses: the number behind the text (text for text columns)


def batches(run) -> list[int]:
    base = run.stages[0].measurement
    return sorted(base.latency_ms) if base and base.latency_ms else []


def quality_label(run) -> str:
    base = run.stages[0].measurement
    return base.quality_label if base else "quality"


def has_ram(run) -> bool:
    """Whether the run measured each stage's inference RAM (studio run does; the window does not)."""
    return any(s.measurement is not None and s.measurement.ram_bytes is not None for s in run.stages)


def runtimes(run) -> list[str]:
    """The runtimes besides onnxruntime the run measured batch-1 latency on (studio run --runtimes)."""
    return [r for r in getattr(run, "runtimes", ("ort",)) if r != "ort"]


def runtime_columns(run) -> list[Column]:
    from .runtimes import title

    cols = []
    for r in runtimes(run):
        cols += [Column(f"{r}_ms_1", f"ms, batch 1, {title(r)}", f"{r} b1", 9),
                 Column(f"{r}_x_1", f"x faster, batch 1, {title(r)}", "x", 5)]
    return cols


def columns(run) -> list[Column]:
    label = quality_label(run)
    cols = [Column("stage", "stage", "stage", 28), Column("quality", label, label, max(9, len(label))),
            Column("parameters", "parameters", "params", 9), Column("nonzeros", "nonzeros", "nonzero", 9),
            Column("size", "file", "file", 10), Column("zipped", "zipped", "zipped", 10),
            Column("x_zip", "x smaller (zip)", "x zip", 6), Column("macs", "MACs", "MACs", 10)]
    if has_ram(run):
        from .runtimes import title

        cols.append(Column("ram", "RAM to run", "RAM", 10))
        cols += [Column(f"{r}_ram", f"RAM to run, {title(r)}", f"RAM {r}", 10) for r in runtimes(run)]
    others = runtime_columns(run)
    if 1 not in batches(run):
        cols += others
    for b in batches(run):
        cols += [Column(f"ms_{b}", f"ms, batch {b}", f"ms b{b}", 9), Column(f"x_{b}", f"x faster, batch {b}", "x", 5)]
        if b == 1:
            cols += others  # side by side with onnxruntime's batch 1, timed in the same rounds
    return cols


def cells(stage, base, batch_sizes, other_runtimes=()) -> dict[str, Cell]:
    """Every cell of one stage's row, against the original's measurement `base`; latency on
    `other_runtimes` at batch 1 against the original on the same runtime."""
    m = stage.measurement
    row = {"stage": Cell(stage.label, stage.index)}
    if m is None:
        return row
    row |= {
        "quality": Cell(m.quality_text, m.quality if m.quality is not None else -1.0),
        "parameters": Cell(f"{m.parameters:,}", m.parameters), "nonzeros": Cell(f"{m.nonzeros:,}", m.nonzeros),
        "size": Cell(fmt_bytes(m.size_bytes), m.size_bytes), "zipped": Cell(fmt_bytes(m.zip_bytes), m.zip_bytes),
        "macs": Cell(f"{m.macs:,}", m.macs),
    }
    if m.ram_bytes is not None:
        row["ram"] = Cell(fmt_bytes(m.ram_bytes), m.ram_bytes)
    if base is not None:
        x = base.zip_bytes / max(1, m.zip_bytes)
        row["x_zip"] = Cell(f"{x:.1f}x", x)
    for b in batch_sizes:
        ms = m.latency_ms.get(b)
        row[f"ms_{b}"] = Cell(f"{ms:.3f}" if ms else NONE, ms or 0.0)
        if ms and base is not None and base.latency_ms.get(b):
            row[f"x_{b}"] = Cell(f"{base.latency_ms[b] / ms:.2f}x", base.latency_ms[b] / ms)
    for r in other_runtimes:
        if r in m.runtime_ram_bytes:
            row[f"{r}_ram"] = Cell(fmt_bytes(m.runtime_ram_bytes[r]), m.runtime_ram_bytes[r])
        ms = m.runtime_ms.get(r)
        row[f"{r}_ms_1"] = Cell(f"{ms:.3f}" if ms else NONE, ms or 0.0)
        if ms and base is not None and base.runtime_ms.get(r):
            row[f"{r}_x_1"] = Cell(f"{base.runtime_ms[r] / ms:.2f}x", base.runtime_ms[r] / ms)
    return row


def rows(run) -> list[dict[str, Cell]]:
    base, sizes = run.stages[0].measurement, batches(run)
    return [cells(s, base, sizes, runtimes(run)) for s in run.stages]


def _rounds(m) -> str:
    """'7 interleaved rounds', or per batch where a time budget cut some: '7 (batch 1) and 3
    (batch 32) interleaved rounds'."""
    counts = dict(sorted((m.latency_rounds if m is not None else {}).items()))
    if len(set(counts.values())) > 1:
        return " and ".join(f"{n} (batch {b})" for b, n in counts.items()) + " interleaved rounds"
    return f"{next(iter(counts.values()))} interleaved rounds" if counts else "interleaved rounds"


def notes(run) -> list[str]:
    """What the numbers mean: the quality measure, the data, how latency was timed."""
    base = run.stages[0].measurement
    lines = [f"{base.quality_label}: {base.quality_means}"] if base is not None else []
    lines.append(f"quality on {base.samples if base else 0} held-out samples of '{run.data_name}'; "
                 f"latency: onnxruntime CPU, {base.threads if base else 1} thread(s), median of {_rounds(base)}; "
                 "x = times smaller / faster than the original")
    lines += macs_notes(run)
    for r in runtimes(run):
        from .runtimes import title

        lines.append(f"{r} b1: {title(r)} latency at batch 1 (its file is written for batch 1), each stage exported "
                     f"as `studio export --format {r}` writes it, timed in "
                     + ("the same interleaved rounds as onnxruntime's batch 1" if 1 in batches(run) else "interleaved rounds")
                     + f", {base.threads if base else 1} thread(s), median; x = against the original on "
                     f"{title(r)}; {NONE} where a stage cannot reach it (its warning says why)")
    if has_ram(run):
        lines.append("RAM: resident memory onnxruntime took to load and run one batch-1 input, in a fresh "
                     f"process per stage ({base.threads if base else 1} thread(s); includes the session's own few MiB)")
        for r in runtimes(run):
            from .runtimes import title

            lines.append(f"RAM {r}: resident memory {title(r)} took to load the stage's batch-1 file and run it "
                         f"{RAM_RUNS} times, in a fresh process per stage (the runtime imported before it counts)")
    return lines


def macs_notes(run) -> list[str]:
    """How the MACs of stages whose graph has If nodes were counted (stats.macs_counted): the
    branches the pinned inputs take, or every branch summed; one line per distinct note, naming
    its stages unless it is every measured stage's."""
    measured = [s for s in run.stages if s.measurement is not None]
    by_note: dict[str, list[str]] = {}
    for s in measured:
        if s.measurement.macs_note:
            by_note.setdefault(s.measurement.macs_note, []).append(s.label)
    return [note + ("" if len(labels) == len(measured) else f" (stage{'s' if len(labels) > 1 else ''} "
                    f"{', '.join(labels)})") for note, labels in by_note.items()]


def text(run) -> str:
    """The command line's table: fixed-width columns, then the notes and every stage's warnings."""
    cols = columns(run)
    head = " ".join(f"{c.short:{c.width}}" if c.key == "stage" else f"{c.short:>{c.width}}" for c in cols)
    lines = [head, "-" * len(head)]
    for stage, row in zip(run.stages, rows(run)):
        if stage.measurement is None:
            lines.append(f"{stage.label[:28]:28} (not measured)")
            continue
        lines.append(" ".join(f"{row['stage'].text[:c.width]:{c.width}}" if c.key == "stage"
                              else f"{row.get(c.key, Cell(NONE, None)).text:>{c.width}}" for c in cols))
    lines += notes(run)
    lines += [f"warning: stage {s.label}: {w}" for s in run.stages for w in s.warnings]
    return "\n".join(lines)
