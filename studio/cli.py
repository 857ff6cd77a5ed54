"""`studio`: the command line. A thin face over studio.core; `studio` alone opens the window.

    studio inspect MODEL [--json]
    studio run MODEL --recipe R.yaml --data DATA --out DIR [--json]
    studio export MODEL --format onnx --out FILE
    studio demo [--out DIR] [--json]
    studio passes [--json]
    studio search MODEL --data D --objective size|latency|macs --max-drop POINTS --time SECONDS --out DIR
    studio gui [MODEL]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

from studio.core.units import fmt_bytes

EXIT_ERROR = 2
EXIT_CANCELLED = 130


class ProgressLine:
    """One line on stderr, rewritten in place (only on a terminal; plain lines otherwise)."""

    def __init__(self, stream=None, enabled: bool = True):
        # sys.stderr as it is now (a default argument would keep the one of import time)
        self.stream, self.enabled = stream or sys.stderr, enabled
        self.tty = self.stream.isatty()
        self.last = ""
        self.last_time = 0.0
        self.start = time.monotonic()

    def __call__(self, fraction: float, message: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if now - self.last_time < 0.1 and fraction < 1:
                return
            width = 28
            filled = int(width * min(max(fraction, 0.0), 1.0))
            elapsed = now - self.start
            eta = f" {elapsed / fraction - elapsed:4.0f}s left" if 0.02 < fraction < 1 else ""
            line = f"\r[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%}{eta} {message}"[:150]
            self.stream.write(line.ljust(len(self.last)))
            self.last = line
        else:  # a log, not a terminal: one line per kind of message (numbers aside), or every 5 s
            kind = re.sub(r"[\d.,/%]+", "#", message)
            if kind == self.last and now - self.last_time < 5:
                return
            self.stream.write(f"{message}\n")
            self.last = kind
        self.last_time = now
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.tty and self.last:
            self.stream.write("\r" + " " * len(self.last) + "\r")
            self.stream.flush()
        self.last = ""


def drive(gen, progress: ProgressLine, scale=lambda p: (p[0], p[1])):
    """Run a core generator to its result, showing its progress."""
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            fraction, message = scale(item)
            progress(fraction, message)
    finally:
        gen.close()
        progress.done()


def parse_shape(text: str | None):
    if not text:
        return None
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise SystemExit(f"studio: error: --input-shape takes numbers like 1,3,224,224, not {text!r}") from None


def load_model(args):
    from studio.core import io

    return io.load(args.model, arch=args.arch, trust=args.trust, input_shape=parse_shape(args.input_shape))


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (.onnx, TorchScript .pt, .pt2, state_dict .pt/.pth, .safetensors) or demo:cnn|mlp|resnet")
    p.add_argument("--arch", help="architecture for weight files: package.module:Class or path/to/file.py:Class")
    p.add_argument("--input-shape", help="input shape with batch, e.g. 1,3,224,224 (when the file does not say)")
    p.add_argument("--input", action="append", metavar="NAME:D0,D1,...|NAME=VALUE",
                   help="size an input's dynamic dims (x:1,3,320,320) or pin an input to a constant (sr=16000); repeatable")
    p.add_argument("--trust", action="store_true", help="allow unpickling a whole model: this RUNS CODE from the file, only for files you trust")


def resolve_model(args):
    if args.model.startswith("demo:"):
        from studio.core import zoo

        model = zoo.load(args.model.split(":", 1)[1])
    else:
        model = load_model(args)
    if getattr(args, "input", None):  # --input NAME:D0,D1,... / NAME=VALUE, repeatable
        model = model.with_signature(model.io.with_overrides(args.input))
    return model


def ready_model(args):
    """The model with every input sized: a dynamic dim or an unset scalar is a one-line error
    naming the input and the --input that fixes it."""
    model = resolve_model(args)
    model.io.check()
    return model


# ---------------------------------------------------------------------------------- commands

def cmd_inspect(args) -> int:
    import studio.core.passes  # noqa: F401 - registers the If-branch specializer that MACs use
    from studio.core.inspect import free_dims, summary

    model = resolve_model(args)
    info = summary(model)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{info['name']}  ({info['format']}, {info['framework']})")
    print(f"input shape {info.get('input_shape')}  parameters {info['parameters']:,}  "
          f"nonzeros {info.get('nonzeros', 0):,}  MACs {info.get('macs', 0):,}")
    if info["macs_note"]:
        print(f"note: {info['macs_note']}")
    for line in model.io.describe():
        print(line)
    covered = set(free_dims(model)) if info["macs_note"] else set()  # the note above says how to size them
    for spec in model.io.inputs:
        problem = spec.needs_user()
        if problem and spec.name not in covered:
            print(f"note: {problem}")
    print(f"{'layer':40} {'op':18} {'params':>10} {'sparsity':>8}  output shape")
    for node in info["nodes"]:
        if node.get("parameters") or args.all:
            print(f"{node['name'][:40]:40} {node['op'][:18]:18} {node.get('parameters', 0):>10,} "
                  f"{node.get('sparsity', 0):>8.1%}  {node.get('output_shape') or ''}")
    shown = sum(1 for n in info["nodes"] if n.get("parameters") or args.all)
    print(f"({len(info['nodes'])} nodes; {shown} shown{'' if args.all else ': layers with weights, --all for every node'})")
    return 0


def run_and_export(model, recipe, data, out: Path, formats, args, progress, evaluator=None) -> dict:
    from studio.core import edge, export, pipeline
    from studio.core import runtimes as rt
    from studio.core.errors import Cancelled, StudioError

    for fmt in formats or ():  # refused before the run, not after it
        if fmt not in export.FORMATS:
            raise StudioError(f"unknown export format '{fmt}'; choose from {', '.join(export.FORMATS)}")
        edge.check_available(fmt)
    runtimes = rt.check(getattr(args, "runtimes", None))  # likewise an unknown or missing runtime
    cancel = threading.Event()
    gen = pipeline.run(
        model, recipe, data, latency_batches=tuple(args.batches), threads=args.threads,
        latency_rounds=args.rounds, latency_budget_s=getattr(args, "latency_budget", 60.0) or None, cancel_event=cancel, evaluator=evaluator,
        measure_ram=not getattr(args, "no_ram", False), runtimes=runtimes,
    )
    run = drive(gen, progress, scale=lambda p: (p.overall, p.message))
    final, why = pipeline.shipped_stage(run)  # the recipe's `ship`: last, fastest or smallest
    final.model.name = f"{model.name}-{final.index}-{final.name}"
    if formats is None:  # default: ONNX, plus the packed file where the stack clusters weights
        formats = ["onnx"] + (["packed"] if any(step.id.startswith("cluster.") for step in final.steps) else [])
    exports = []
    for fmt in formats:
        target = out / export.default_name(final.model, fmt)
        try:
            result = drive(export.export(final.model, target, fmt, data=data), progress)
        except Cancelled:
            raise
        except StudioError as exc:  # this stage cannot reach the format: the run and the other files stand
            exports.append({"path": str(target), "format": fmt, "verified": False, "written": False,
                            "max_abs_diff": None, "agreement": None, "size_bytes": 0, "message": str(exc)})
            continue
        exports.append({**result.as_dict(), "written": True})
    report = {"model": model.name, "source": str(model.source or model.name), **run.as_dict(), "exports": exports,
              "shipped": {"stage": final.index, "label": final.label, "why": why}}
    return {"run": run, "report": report}


def write_report(out: Path, result: dict) -> Path:
    """report.json (machine-readable) and report.html (the same table, for people)."""
    from studio.core.fileio import atomic_write_text
    from studio.core.report import write_html

    report = result["report"]
    path = out / "report.json"
    atomic_write_text(path, json.dumps(report, indent=2, default=str))
    write_html(out / "report.html", [result["run"]], model_name=report["model"], source=report["source"])
    return path


def print_result(result: dict, out: Path, args) -> None:
    report = result["report"]
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return
    from studio.core import stage_table

    print(stage_table.text(result["run"]))
    shipped = result["report"]["shipped"]
    print(f"shipped: stage {shipped['label']}, {shipped['why']}")
    for e in report["exports"]:
        mark = "ok" if e["verified"] else "NOT VERIFIED" if e["written"] else "NOT WRITTEN"
        print(f"export {e['format']:12} {mark:12} {e['path']}  ({fmt_bytes(e['size_bytes'])}; {e['message']})")
    print(f"report: {out / 'report.json'}")


def cmd_run(args) -> int:
    from studio.core.data import open_data
    from studio.core.recipe import Recipe

    recipe = Recipe.load(args.recipe)  # before loading the model: a bad recipe fails fast
    evaluator = None
    if args.metric:  # typed by the user, so `module:function` may be imported (a recipe's may not)
        from studio.core.plugins import evaluator as find_evaluator

        evaluator = find_evaluator(args.metric, allow_import=True)
    model = ready_model(args)
    data = open_data(args.data, model.input_shape, signature=model.io)
    out = Path(args.out)
    formats = args.export if args.export is not None else (recipe.export or None)  # --export, else the recipe's
    result = run_and_export(model, recipe, data, out, formats, args, ProgressLine(enabled=not args.quiet),
                            evaluator)
    write_report(out, result)
    print_result(result, out, args)
    return 0 if all(e["verified"] for e in result["report"]["exports"]) else 1


def cmd_demo(args) -> int:
    from studio.core import zoo
    from studio.core.data import digits
    from studio.core.recipe import demo_recipe

    progress = ProgressLine(enabled=not args.quiet)
    progress(0.0, f"loading the demo model '{args.model}' (trained on digits)")
    model = zoo.load(args.model)
    recipe = demo_recipe()
    out = Path(args.out)
    if not args.json:
        print(f"demo: {model.name}, recipe '{recipe.name}': " + " -> ".join(s.label() for s in recipe.passes))
    result = run_and_export(model, recipe, digits(), out, ["onnx"], args, progress)
    write_report(out, result)
    print_result(result, out, args)
    return 0 if all(e["verified"] for e in result["report"]["exports"]) else 1


def cmd_export(args) -> int:
    from studio.core import export
    from studio.core.data import open_data

    model = ready_model(args)
    data = open_data(args.data, model.input_shape, signature=model.io) if args.data else None
    out = Path(args.out)
    result = drive(export.export(model, out, args.format, data=data), ProgressLine(enabled=not args.quiet))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(f"{result.path}: {fmt_bytes(result.size_bytes)}, {result.message}")
    return 0 if result.verified else 1


def cmd_passes(args) -> int:
    """The passes and evaluators this studio knows, built-in and from plugins."""
    from studio.core import plugins
    from studio.core.passes import registry

    passes = registry.all_passes()
    evaluators = plugins.evaluators()
    if args.json:
        print(json.dumps({
            "passes": [{"id": pid, "title": cls.title, "frameworks": list(cls.frameworks),
                        "origin": registry.origin(pid)} for pid, cls in passes.items()],
            "evaluators": [{"name": e.name, "description": e.description} for e in evaluators.values()],
            "problems": plugins.problems(),
        }, indent=2))
        return 0
    print(f"{'pass':24} {'works on':12} {'from':22} title")
    for pid, cls in passes.items():
        print(f"{pid:24} {'/'.join(cls.frameworks):12} {registry.origin(pid):22} {cls.title}")
    print("evaluators (recipe `evaluator: NAME`, or `studio run --metric NAME|module:function`):")
    for e in evaluators.values():
        print(f"  {e.name:22} {e.description}")
    if not evaluators:
        print("  none installed (docs/plugins.md says how to add one)")
    return 0


def cmd_search(args) -> int:
    from studio.core import search

    source = search.Source.of(args.model, args.data, arch=args.arch, trust=args.trust,
                              input_shape=parse_shape(args.input_shape), inputs=tuple(args.input or ()))
    settings = search.Settings(
        source, Path(args.out), objectives=tuple(o.strip() for o in args.objective.split(",")),
        max_drop=args.max_drop, seconds=args.time, workers=args.workers, ray_address=args.ray_address,
        trials=args.trials, batch=args.batch, threads=args.threads, storage=args.storage, seed=args.seed,
        passes=tuple(args.passes.split(",")) if args.passes else None, max_epochs=args.max_epochs)
    progress = ProgressLine(enabled=not args.quiet)
    gen = search.search(settings)
    # libraries print to stdout (onnxruntime's entropy calibration does): stdout is the JSON's alone
    with contextlib.redirect_stdout(sys.stderr):
        summary = _drive_search(gen, progress, args)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(search_table(summary))
    return 0


def _drive_search(gen, progress, args) -> dict:
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                summary = stop.value
                break
            if event.candidate is not None and not args.quiet:  # a candidate is a line of its own
                progress.done()
                print(event.message, file=sys.stderr)
            elif event.detail and not progress.tty:  # a log gets the candidates, not every step
                continue
            else:
                progress(event.fraction, event.message)
    finally:
        gen.close()
        progress.done()
    return summary


def search_table(summary: dict) -> str:
    """The candidates, best first within the budget, the Pareto front marked: each one's quality
    on the selection set (what the search chose by) and, for the front and the best, on the
    confirmation set (what it reports)."""
    from studio.core.search import quality_text

    order = sorted(summary["candidates"], key=lambda c: (not c["within_budget"], c["shipped_bytes"]))
    lines = [(f"{'':3} {'trial':>5} {'quality':>8} {'drop':>6} {'sel.q':>8} {'sel.drop':>8} {'shipped':>10} "
              f"{'x smaller':>9} {'ms':>8} {'MACs':>10}  recipe")]
    for c in order:
        mark = (("*" if c["pareto"] else " ") + ("!" if not c["within_budget"] else " ")
                + ("?" if c.get("confirmed_within_budget") is False else " "))
        ms = f"{c['latency_ms']:.3f}" + ("" if c["latency_remeasured"] else "~") if c["latency_ms"] else "-"
        label = c["quality_label"]
        drop = "-" if c["quality_drop_points"] is None else f"{c['quality_drop_points']:.2f}"
        lines.append(f"{mark} {c['trial']:>5} {quality_text(label, c['quality']):>8} {drop:>6} "
                     f"{quality_text(label, c['selection_quality']):>8} {c['selection_drop_points']:>8.2f} "
                     f"{fmt_bytes(c['shipped_bytes']):>10} {c['x_smaller']:>8}x {ms:>8} {c['macs']:>10,}  "
                     f"{c['recipe']['name']}")
    held = summary.get("held_out") or {}
    if held.get("split"):
        lines.append(f"quality, drop: on the confirmation set ({held['confirmation']} held-out samples no trial "
                     f"decision looked at), for the front and the best; sel.q, sel.drop: on the selection set "
                     f"({held['selection']} samples, {held.get('selection_set', 'selection half')}), what the search "
                     "chose by (optimistic for the winners)")
    elif held:
        lines.append(f"NOT CONFIRMED: {held['note']}")
    lines.append(f"* = Pareto front (selection drop vs {', '.join(summary['objectives'])}); ! = over the "
                 f"{summary['max_drop_points']}-point budget on the selection set; ? = over it on the confirmation "
                 f"set; ms~ = measured on a worker beside others, the front's "
                 f"ms measured again in-process ({summary['latency']['threads']} thread(s), batch {summary['latency']['batch']})")
    lines.append(f"{len(summary['candidates'])} candidates ({summary['measured_this_run']} measured in this run, "
                 f"{len(summary['failed'])} failed), executor {summary['executor']}, stopped by {summary['stopped']}")
    best = summary["best"]
    if best:
        files = ", ".join(f"{e['path']} ({'verified' if e['verified'] else 'NOT VERIFIED'})" for e in best["exports"])
        label = best["quality_label"]
        confirmed = (f"{label} {quality_text(label, best['quality'])} ({0.0 - best['quality_drop_points']:+.2f} points) "
                     f"confirmed, {quality_text(label, best['selection_quality'])} "
                     f"({0.0 - best['selection_drop_points']:+.2f}) on the selection set" if best["confirmed"]
                     else f"{label} {quality_text(label, best['selection_quality'])} (not confirmed)")
        lines.append(f"best: trial {best['trial']}, {confirmed}, recipe {best['recipe_file']}; {files}")
    else:
        lines.append(f"best: no candidate within {summary['max_drop_points']} points yet"
                     + (" (on both sets)" if (summary.get("held_out") or {}).get("split") else ""))
    if summary.get("failed_confirmation"):
        lines.append("within the budget on the selection set but not on the confirmation set (not best): trials "
                     + ", ".join(f"{f['trial']} ({0.0 - f['quality_drop_points']:+.2f})"
                                 for f in summary["failed_confirmation"]))
    lines.append(f"all candidates: {summary['out']}/candidates/; summary: {summary['out']}/search.json")
    return "\n".join(lines)


def cmd_gui(args) -> int:
    try:
        from studio.qt.app import main as gui_main
    except ImportError as exc:
        raise SystemExit(f"studio: the window cannot start: {exc}") from None
    return gui_main([args.model] if getattr(args, "model", None) else [])


def build_parser() -> argparse.ArgumentParser:
    from studio import __version__

    parser = argparse.ArgumentParser(prog="studio", description="Compress models and measure what it bought you.")
    parser.add_argument("--version", action="version", version=f"studio {__version__}")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("inspect", help="show a model's layers, parameters and MACs")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="list every node, not only layers with weights")
    p.set_defaults(func=cmd_inspect)

    def add_measure_args(p):
        p.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="batch sizes for latency (default 1 32)")
        p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for latency (default 1)")
        p.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds (default 7)")
        p.add_argument("--latency-budget", type=float, default=60.0, metavar="SECONDS",
                       help="seconds the rounds of one batch size may take; slower models get fewer rounds, "
                            "never under 3 (default 60; 0 = always --rounds)")
        p.add_argument("--runtimes", nargs="+", default=["ort"], metavar="RUNTIME",
                       help="where to measure latency: ort (onnxruntime, always), pte (ExecuTorch XNNPACK), tflite "
                            "(LiteRT interpreter); both at batch 1, every stage exported first, seconds each (default ort)")
        p.add_argument("--no-ram", action="store_true",
                       help="skip measuring each stage's inference RAM (a fresh process per stage)")
        p.add_argument("--json", action="store_true", help="print report.json instead of the table")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")

    p = sub.add_parser("run", help="apply a recipe, measure every stage, export the result")
    add_model_args(p)
    p.add_argument("--recipe", required=True, help="recipe YAML (the window's Recipe > Save writes one)")
    p.add_argument("--data", default="digits", help="digits, random, a .npz (x, y) or an image folder (class subfolders, or images alone) (default digits)")
    p.add_argument("--out", default="studio-out", help="folder for exports and report.json")
    p.add_argument("--export", nargs="+", default=None,
                   help="formats to export the shipped stage as (the recipe's ship: last by default); default: the recipe's "
                        "export list, else onnx, and packed after clustering")
    p.add_argument("--metric", help="quality measure: an installed evaluator's name or module:function "
                                    "(fn(outputs, labels, reference) -> float, higher is better)")
    add_measure_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the whole job on a built-in model: prune + INT8, measure, export")
    p.add_argument("--model", default="cnn", choices=["cnn", "mlp", "resnet"], help="demo model (default cnn)")
    p.add_argument("--out", default="studio-out", help="folder for exports and report.json")
    add_measure_args(p)
    p.set_defaults(func=cmd_demo, batches=[1, 256])

    p = sub.add_parser("export", help="write a model as ONNX, ONNX FP16/INT8, ORT format, ExecuTorch, LiteRT, TorchScript, torch.export, "
                       "safetensors or packed, verified")
    add_model_args(p)
    p.add_argument("--format", default="onnx", help="onnx, onnx_fp16, onnx_int8, ort (ORT Mobile), pte, pte_int8 (ExecuTorch), tflite, tflite_int8 "
                        "(LiteRT), torchscript, torch_export, safetensors, packed")
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument("--data", help="data for INT8 calibration and verification (digits, random, .npz, folder)")
    p.add_argument("--json", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("passes", help="list the passes and evaluators, built-in and from plugins")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_passes)
    p = sub.add_parser("search", help="search recipes for the quality/footprint trade-off; keeps every candidate")
    add_model_args(p)
    p.add_argument("--data", default="digits", help="digits, random, a .npz (x, y) or an image folder (class subfolders, or images alone) (default digits)")
    p.add_argument("--objective", default="size",
                   help="size, latency or macs; several comma-separated (size,latency) for multi-objective TPE (default size)")
    p.add_argument("--max-drop", type=float, default=0.5, help="quality points a candidate may lose (default 0.5)")
    p.add_argument("--time", type=float, default=600, help="seconds; no new candidate starts after (default 600)")
    p.add_argument("--trials", type=int, help="at most this many candidates in the search (earlier runs count)")
    p.add_argument("--out", default="studio-search", help="folder for the store, every candidate and best.yaml")
    p.add_argument("--workers", type=int, default=1, help="parallel candidates; more than 1 runs them on Ray")
    p.add_argument("--ray-address", help="an existing Ray cluster (default: a local Ray the studio starts)")
    p.add_argument("--storage", help="an Optuna database URL (default: SQLite in --out)")
    p.add_argument("--passes", help="only these passes, comma-separated (default: every pass the search varies)")
    p.add_argument("--max-epochs", type=int, help="cap on every pass's training epochs (0: no training)")
    p.add_argument("--batch", type=int, default=1, help="batch size for latency (default 1)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for latency (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("gui", help="open the studio window (the default)")
    p.add_argument("model", nargs="?", help="a model file to open")
    p.set_defaults(func=cmd_gui)
    parser.commands = set(sub.choices)  # `studio FILE` means `studio gui FILE` (see main)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] == "_probe":  # internal: parse an untrusted file in this child process
        from studio.core.io.probe import child_main

        return child_main(argv[1:])
    if argv and argv[0] == "_ram":  # internal: the packaged studio measuring a stage's RAM (core.memory)
        from studio.core.memory import child_main

        return child_main(argv[1:])
    if argv and argv[0] in ("_outputs", "_quantize"):  # computing children: below the job that waits for them
        from studio.core.child import lower_priority

        lower_priority()
    if argv and argv[0] == "_outputs":  # internal: a big model's outputs (and zipped size) for measuring
        from studio.core.outputs_child import child_main as outputs_main

        return outputs_main(argv[1:])
    if argv and argv[0] == "_quantize":  # internal: onnxruntime's quantize_static for the INT8 pass's try
        from studio.core.passes.quantize_child import child_main

        return child_main(argv[1:])
    parser = build_parser()
    if argv and argv[0] not in parser.commands and not argv[0].startswith("-") and Path(argv[0]).exists():
        argv = ["gui", *argv]  # `studio model.onnx` opens the window on it, as a file manager would
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["gui", *(argv or [])])
    from studio.core.errors import Cancelled, StudioError

    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("\nstudio: cancelled; nothing half-written was left behind", file=sys.stderr)
        return EXIT_CANCELLED
    except Cancelled:
        print("studio: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except StudioError as exc:
        print(f"studio: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"studio: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        if os.environ.get("STUDIO_DEBUG"):
            raise
        print(f"studio: error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(STUDIO_DEBUG=1 for details)", file=sys.stderr)
        return EXIT_ERROR
    finally:
        plugin_warnings()


def plugin_warnings() -> None:
    """A plugin that failed to load: one line each on stderr, and the command went on without it."""
    plugins = sys.modules.get("studio.core.plugins")  # loaded only if the command looked passes up
    for line in plugins.problems() if plugins else ():
        print(f"studio: warning: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
