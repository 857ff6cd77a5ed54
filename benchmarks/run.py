"""Side-by-side benchmark: the studio's passes and the plain libraries on the same models, in one
run. Writes benchmarks/results/results.json and results.md (and chart.png via chart.py).

    python -m benchmarks.run                 # everything (tens of minutes on 2 cores)
    python -m benchmarks.run --models demo-cnn --rounds 5

Quality: accuracy on the digits held-out split (trained demo models) or top-1 agreement with the
FP32 model on random inputs (random-weight models). Latency: onnxruntime CPU, 1 thread, the
median of interleaved rounds over all variants of a model (A B C A B C ...), reported as ratios to
FP32. Shipped bytes: the file a user ships (ONNX, or the studio's packed file where a recipe ends
in clustering); zipped: deflate level 6 of that file.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path


from studio.core import zoo
from studio.core.convert import to_onnx_proto
from studio.core.data import Data, digits, random_inputs
from studio.core.evaluate import measure, measure_latency, reference_outputs
from studio.core.model import ONNX, TORCH, Model
from studio.core.recipe import Recipe
from studio.core.training import drain

from . import peers

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
RECIPES = ROOT.parent / "recipes"


@dataclass
class Variant:
    name: str
    kind: str  # "baseline", "peer" or "studio"
    model: Model
    seconds: float = 0.0  # time the compression took
    artifact_bytes: int | None = None  # when the shipped file is not the ONNX itself (packed)
    note: str = ""
    measurement: dict = field(default_factory=dict)


@dataclass
class Bench:
    name: str
    model: Model
    data: Data
    batches: tuple[int, ...] = (1, 256)
    trained: bool = True
    variants: list[Variant] = field(default_factory=list)


def studio_recipe(bench: Bench, recipe_file: str, label: str | None = None) -> Variant:
    """Run a recipe the studio ships on the model, exactly as `studio run` would."""
    from studio.core import pipeline

    recipe = Recipe.load(RECIPES / recipe_file)
    start = time.perf_counter()
    run = drain(pipeline.run(bench.model, recipe, bench.data, measure_stages=False))
    seconds = time.perf_counter() - start
    final = run.stages[-1]
    variant = Variant(label or f"studio: {recipe_file}", "studio", final.model, seconds)
    if final.name.startswith("cluster"):
        variant.artifact_bytes, variant.note = packed_size(final.model), "packed file (indices + codebook, entropy coded)"
    return variant


def packed_size(model: Model) -> int:
    import tempfile

    from studio.core import packed

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.packed"
        packed.pack(model, path)
        return path.stat().st_size


def timed_pass(bench: Bench, pass_id: str, model: Model | None = None, **options):
    from studio.core.passes import Context, create

    start = time.perf_counter()
    result = drain(create(pass_id, **options).apply(model or bench.model, Context(data=bench.data, original=bench.model)))
    return result.model, time.perf_counter() - start


def torch_model(bench: Bench, module) -> Model:
    return bench.model.with_obj(module, TORCH)


def onnx_model(bench: Bench, proto) -> Model:
    return bench.model.with_obj(proto, ONNX, format="onnx")


# ------------------------------------------------------------------------------- the models

def digits_bench(name: str) -> Bench:
    return Bench(f"demo-{name}", zoo.load(name), digits())


def random_bench(name: str, module, input_shape, batches) -> Bench:
    model = Model(module.eval(), TORCH, input_shape, name=name)
    return Bench(name, model, random_inputs(input_shape, count=80), batches=batches, trained=False)


def mlp4096() -> Bench:
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000))
    return random_bench("mlp-4096", net, (1, 1024), (1, 256))


def resnet18_224() -> Bench:
    import torch

    from studio.core.zoo.archs import ARCHS

    torch.manual_seed(0)
    factory, shape = ARCHS["resnet18"]
    # batch 16, not 256, at 224x224: one batch-256 run takes ~10 s on one thread here
    return random_bench("resnet18-224", factory(), shape, (1, 16))


# --------------------------------------------------------------------------- the variants

def add_variants(bench: Bench, epochs: int) -> None:
    d = bench.data
    x = d.shaped(d.x_train, bench.model.input_shape)
    y = d.y_train
    fp32 = to_onnx_proto(bench.model)
    add = bench.variants.append
    add(Variant("FP32", "baseline", bench.model))
    calib = x[:256]
    # peers, each alone
    if bench.trained:
        m, s = peers.torch_prune_unstructured(bench.model.obj, x, y, 0.9, epochs)
        add(Variant("torch prune 90% + ft", "peer", torch_model(bench, m), s))
    m, s = peers.torch_pruning_channels(bench.model.obj, x, y if bench.trained else None, 0.5, epochs if bench.trained else 0)
    tp_model = torch_model(bench, m)
    add(Variant("Torch-Pruning 50% ch" + (" + ft" if bench.trained else ""), "peer", tp_model, s))
    q, s = peers.ort_static(fp32, calib)
    add(Variant("ORT static INT8", "peer", onnx_model(bench, q), s))
    q, s = peers.ort_dynamic(fp32)
    add(Variant("ORT dynamic INT8", "peer", onnx_model(bench, q), s))
    # peers stacked by hand
    q, s2 = peers.ort_static(to_onnx_proto(tp_model), calib)
    add(Variant("by hand: Torch-Pruning + ORT static", "peer", onnx_model(bench, q), s + s2))
    if bench.trained:
        m, s = peers.torch_prune_unstructured(bench.model.obj, x, y, 0.95, epochs)
        q, s2 = peers.ort_static(to_onnx_proto(torch_model(bench, m)), calib)
        add(Variant("by hand: torch prune 95% + ft + ORT static", "peer", onnx_model(bench, q), s + s2))
    # the studio
    for recipe_file, label in recipes_for(bench):
        try:
            add(studio_recipe(bench, recipe_file, label))
        except Exception as exc:  # noqa: BLE001 - a missing pass is a result to report, not a crash
            print(f"  {bench.name}: {label} failed: {exc}")
            bench.variants.append(Variant(label, "studio", bench.model, note=f"FAILED: {exc}"))


def recipes_for(bench: Bench):
    if bench.trained:
        return [("smallest.yaml", "studio: smallest"), ("fastest.yaml", "studio: fastest")]
    return [("fastest-speed-only.yaml", "studio: structured + INT8"), ("int8.yaml", "studio: INT8 static")]


# ----------------------------------------------------------------------------- measuring

def measure_bench(bench: Bench, rounds: int) -> None:
    ok = [v for v in bench.variants if not v.note.startswith("FAILED")]
    reference = reference_outputs(bench.model, bench.data)
    protos = []
    for v in ok:
        proto = to_onnx_proto(v.model)
        protos.append(proto)
        m = measure(v.model, bench.data, reference, proto)
        v.measurement = m.as_dict()
        v.measurement["shipped_bytes"] = v.artifact_bytes or m.size_bytes
        v.measurement["shipped_zip_bytes"] = v.artifact_bytes or m.zip_bytes
    latencies = drain(measure_latency(protos, bench.model.input_shape, bench.batches, threads=1, rounds=rounds, min_round_s=0.05))
    for v, lat in zip(ok, latencies):
        v.measurement["latency_ms"] = {str(k): t for k, t in lat.items()}


def ratios(bench: Bench) -> list[dict]:
    base = bench.variants[0].measurement
    rows = []
    for v in bench.variants:
        m = v.measurement
        row = {"variant": v.name, "kind": v.kind, "seconds": round(v.seconds, 2), "note": v.note}
        if m:
            q = m["accuracy"] if bench.trained else m["agreement"]
            row.update({
                "quality": q, "quality_drop_points": round(100 * ((base["accuracy"] if bench.trained else 1.0) - q), 2),
                "parameters": m["parameters"], "nonzeros": m["nonzeros"], "macs": m["macs"],
                "onnx_bytes": m["size_bytes"], "zip_bytes": m["zip_bytes"], "shipped_bytes": m["shipped_bytes"],
                "x_smaller_shipped": round(base["size_bytes"] / m["shipped_bytes"], 2),
                "x_smaller_zipped": round(base["zip_bytes"] / m["shipped_zip_bytes"], 2),
                "latency_ms": m["latency_ms"],
                "x_faster": {b: round(base["latency_ms"][b] / t, 2) for b, t in m["latency_ms"].items()},
            })
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------- goals

def goals(results: dict) -> list[dict]:
    def rows(model):
        return results["models"].get(model, {}).get("variants", [])

    def best(model, pred, key):
        cands = [r for r in rows(model) if r["kind"] == "studio" and "quality" in r and pred(r)]
        return max(cands, key=key) if cands else None

    out = []

    def goal(text, model, pred, key, target, fmt):
        r = best(model, pred, key)
        value = key(r) if r else None
        out.append({"goal": text, "model": model, "target": target, "value": value,
                    "variant": r["variant"] if r else None, "met": value is not None and value >= target,
                    "detail": fmt(r) if r else "not measured"})

    goal("demo CNN: >= 40x smaller shipped artifact, <= 0.5 points lost", "demo-cnn",
         lambda r: r["quality_drop_points"] <= 0.5, lambda r: r["x_smaller_shipped"], 40,
         lambda r: f"{r['x_smaller_shipped']}x, {r['quality_drop_points']} points")
    goal("demo CNN: >= 4x lower latency at batch 256, <= 1 point lost", "demo-cnn",
         lambda r: r["quality_drop_points"] <= 1, lambda r: r["x_faster"].get("256", 0), 4,
         lambda r: f"{r['x_faster'].get('256')}x, {r['quality_drop_points']} points")
    goal("ResNet-18-style 224: >= 8x lower latency at batch 1 (structured + INT8)", "resnet18-224",
         lambda r: "structured" in r["variant"], lambda r: r["x_faster"].get("1", 0), 8,
         lambda r: f"{r['x_faster'].get('1')}x")
    goal("ResNet-18-style 224: INT8 alone keeps >= 95% top-1 agreement", "resnet18-224",
         lambda r: "INT8 static" in r["variant"], lambda r: r["quality"], 0.95, lambda r: f"{r['quality']:.1%}")
    goal("demo ResNet: >= 3x lower latency at batch 256 within 1 point", "demo-resnet",
         lambda r: r["quality_drop_points"] <= 1, lambda r: r["x_faster"].get("256", 0), 3,
         lambda r: f"{r['x_faster'].get('256')}x, {r['quality_drop_points']} points")
    for o in results.get("overhead", []):
        out.append({"goal": f"overhead over the plain call: {o['what']} <= 1.2x", "model": o["model"],
                    "target": 1.2, "value": o["ratio"], "variant": o["what"], "met": o["ratio"] <= 1.2,
                    "detail": f"studio {o['studio_s']:.2f} s vs plain {o['plain_s']:.2f} s"})
    return out


def overhead(bench: Bench, epochs: int) -> list[dict]:
    """The studio's pass against the library call it wraps, same inputs, same work, best of 3."""
    d = bench.data
    x = d.shaped(d.x_train, bench.model.input_shape)
    fp32 = onnx_model(bench, to_onnx_proto(bench.model))
    pairs = [
        ("quantize.int8_static vs ORT quantize_static",
         lambda: timed_pass(bench, "quantize.int8_static", fp32, calibration_samples=256)[1],
         lambda: peers.ort_static(fp32.obj, x[:256])[1]),
        ("prune.structured vs Torch-Pruning",
         lambda: timed_pass(bench, "prune.structured", ratio=0.5, fine_tune_epochs=epochs)[1],
         lambda: peers.torch_pruning_channels(bench.model.obj, x, d.y_train, 0.5, epochs)[1]),
        ("prune.magnitude vs torch.nn.utils.prune",
         lambda: timed_pass(bench, "prune.magnitude", sparsity=0.9, fine_tune_epochs=epochs, learning_rate=5e-4)[1],
         lambda: peers.torch_prune_unstructured(bench.model.obj, x, d.y_train, 0.9, epochs)[1]),
    ]
    out = []
    for what, studio_call, plain_call in pairs:
        try:
            s = min(studio_call() for _ in range(3))
            p = min(plain_call() for _ in range(3))
        except Exception as exc:  # noqa: BLE001
            print(f"  overhead {what}: {exc}")
            continue
        out.append({"model": bench.name, "what": what, "studio_s": s, "plain_s": p, "ratio": round(s / p, 3)})
    return out


def markdown(results: dict) -> str:
    lines = [f"# Benchmark results ({results['date']}, {results['machine']})", "",
             "Ratios are against FP32 of the same model, all measured in the same run. "
             "Latency: onnxruntime CPU, 1 thread, median of interleaved rounds.", "", "## Goals", "",
             "| goal | result | met |", "|---|---|---|"]
    for g in results["goals"]:
        lines.append(f"| {g['goal']} | {g['detail']} ({g['variant']}) | {'yes' if g['met'] else '**no**'} |")
    for name, model in results["models"].items():
        batches = model["batches"]
        lines += ["", f"## {name}", "", f"quality = {'accuracy (digits held-out)' if model['trained'] else 'top-1 agreement with FP32 (random inputs; random weights, so after pruning it means nothing: these rows are speed only, the INT8 rows are the quality check)'}", "",
                  "| variant | quality | params | nonzeros | MACs | shipped | x smaller | x smaller (zip) | "
                  + " | ".join(f"x faster b{b}" for b in batches) + " | time (s) |",
                  "|---" * (9 + len(batches)) + "|"]
        for r in model["variants"]:
            if "quality" not in r:
                lines.append(f"| {r['variant']} | {r['note']} |")
                continue
            lines.append(
                f"| {r['variant']} | {r['quality']:.2%} | {r['parameters']:,} | {r['nonzeros']:,} | {r['macs']:,} | "
                f"{r['shipped_bytes']:,} | {r['x_smaller_shipped']}x | {r['x_smaller_zipped']}x | "
                + " | ".join(f"{r['x_faster'].get(str(b), '-')}x" for b in batches) + f" | {r['seconds']} |")
    if results.get("overhead"):
        lines += ["", "## Overhead over the wrapped library (best of 3)", "", "| what | studio (s) | plain (s) | ratio |", "|---|---|---|---|"]
        for o in results["overhead"]:
            lines.append(f"| {o['what']} | {o['studio_s']:.2f} | {o['plain_s']:.2f} | {o['ratio']}x |")
    return "\n".join(lines) + "\n"


BENCHES = {
    "demo-mlp": lambda: digits_bench("mlp"),
    "demo-cnn": lambda: digits_bench("cnn"),
    "demo-resnet": lambda: digits_bench("resnet"),
    "mlp-4096": mlp4096,
    "resnet18-224": resnet18_224,
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    parser.add_argument("--rounds", type=int, default=9, help="interleaved latency rounds")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tune epochs for every pruning variant")
    parser.add_argument("--out", default=str(RESULTS), help="folder for results.json / results.md")
    parser.add_argument("--no-overhead", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
               "models": {}, "overhead": []}
    for name in args.models:
        start = time.perf_counter()
        bench = BENCHES[name]()
        print(f"{name}: compressing ({len(bench.variants)} variants so far)")
        add_variants(bench, args.epochs)
        print(f"{name}: measuring {len(bench.variants)} variants")
        measure_bench(bench, args.rounds)
        results["models"][name] = {"batches": list(bench.batches), "trained": bench.trained, "variants": ratios(bench)}
        if name == "demo-cnn" and not args.no_overhead:
            results["overhead"] = overhead(bench, args.epochs)
        print(f"{name}: done in {time.perf_counter() - start:.0f} s")
    results["goals"] = goals(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "results.md").write_text(markdown(results))
    # the chart in its own process: Qt's teardown there must not take this one down (chart.py)
    import subprocess
    import sys

    drawn = subprocess.run([sys.executable, "-m", "benchmarks.chart", str(out)], cwd=ROOT.parent,
                           env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"}, capture_output=True, text=True)
    if drawn.returncode != 0:  # the numbers matter more than the picture
        print(f"chart not drawn: {drawn.stderr.strip().splitlines()[-1:]}")
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
