"""The search's goals (issue 11) on the demo CNN: `studio search` with two local Ray workers, then
the goals checked on its candidates. The shipped recipes are the search's first trials, so they
are measured in the same run, on the same machine, the same way as the candidates that must beat
them. Writes benchmarks/results/search-OBJECTIVE.json and .md (the store with every model file stays
in --out, outside the repository).

    python -m benchmarks.search                       # 30 minutes, 2 workers
    python -m benchmarks.search --minutes 20
    python -m benchmarks.search --objective latency --batch 256
    python -m benchmarks.search --summarize OUT       # the goals of a search already in OUT

Latency here is the ratio of a candidate to the original timed in the same interleaved rounds on
its worker (the search's objective); the front's latencies are timed again in-process at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from studio.core import search
from studio.core.training import drain

RESULTS = Path(__file__).parent / "results"
LATENCY_BATCHES = (1, 256)


def retime(cands: list[dict]) -> list[dict]:
    """Latency (ms) of each candidate's stored model.onnx, in interleaved rounds, one thread."""
    import onnx

    from studio.core import zoo
    from studio.core.evaluate import measure_latency

    protos = [onnx.load(str(Path(c["folder"]) / "model.onnx")) for c in cands]
    return drain(measure_latency(protos, zoo.load("cnn").input_shape, LATENCY_BATCHES, 1, rounds=9))


def run_search(out: Path, minutes: float, workers: int, objective: str, batch: int) -> dict:
    settings = search.Settings(search.Source.of("demo:cnn", "digits"), out, objectives=tuple(objective.split(",")),
                               max_drop=0.5, seconds=minutes * 60, workers=workers, batch=batch)
    return drain(search.search(settings))


def goals(summary: dict) -> list[dict]:
    cands = summary["candidates"]
    shipped = {c["warm_start"]: c for c in cands if c.get("warm_start")}
    rows = []

    def goal(text, met, measured):
        rows.append({"goal": text, "met": bool(met), "measured": measured})

    early = [c for c in cands if c["landed_s"] <= 360]
    goal(f"at least 10 candidates in the first 6 minutes with {summary['workers']} workers", len(early) >= 10,
         f"{len(early)} candidates")
    smallest = next((c for n, c in shipped.items() if n.startswith("smallest")), None)
    if smallest:
        beat = [c for c in cands if c["shipped_bytes"] < smallest["shipped_bytes"] and c["quality"] >= smallest["quality"]]
        best = min(beat, key=lambda c: c["shipped_bytes"]) if beat else None
        goal("a candidate smaller than recipes/smallest.yaml and at least as accurate", beat,
             f"smallest.yaml: {smallest['shipped_bytes']:,} bytes, {smallest['quality']:.2%}; "
             + (f"trial {best['trial']}: {best['shipped_bytes']:,} bytes, {best['quality']:.2%}" if best else "none"))
    fastest = next((c for n, c in shipped.items() if n.startswith("fastest:")), None)
    if fastest:
        # a worker's timing beside another worker is a guide only: fastest.yaml and the five
        # candidates at least as accurate that looked fastest are timed again here, interleaved
        rivals = sorted((c for c in cands if c["quality"] >= fastest["quality"] and c is not fastest),
                        key=lambda c: c["latency_ratio"])[:5]
        timed = retime([fastest, *rivals])
        for batch in LATENCY_BATCHES:
            base = timed[0][batch]
            beat = [(c, t[batch]) for c, t in zip(rivals, timed[1:]) if t[batch] < base]
            best = min(beat, key=lambda ct: ct[1]) if beat else None
            goal(f"a candidate faster than recipes/fastest.yaml at batch {batch} and at least as accurate "
                 "(timed again in-process, 1 thread, interleaved)", beat,
                 f"fastest.yaml: {base:.4f} ms, {fastest['quality']:.2%}; "
                 + (f"trial {best[0]['trial']}: {best[1]:.4f} ms ({base / best[1]:.2f}x faster), {best[0]['quality']:.2%}"
                    if best else f"none of trials {[c['trial'] for c in rivals]}"))
    within = [c for c in cands if c["quality_drop_points"] <= 0.5]
    top = max(within, key=lambda c: c["x_smaller"]) if within else None
    goal("a candidate at least 60x smaller than the FP32 ONNX within 0.5 points", top and top["x_smaller"] >= 60,
         f"trial {top['trial']}: {top['x_smaller']}x, -{top['quality_drop_points']} points" if top else "none")
    return rows


def write(summary: dict, rows: list[dict]) -> None:
    name = "search-" + "-".join(summary["objectives"])
    RESULTS.mkdir(exist_ok=True)
    keep = ("trial", "recipe", "folder", "quality", "quality_drop_points", "shipped_bytes", "x_smaller", "latency_ms",
            "latency_ratio", "latency_remeasured", "macs", "pareto", "within_budget", "warm_start", "landed_s")
    record = {"machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
              **{k: summary[k] for k in ("executor", "workers", "objectives", "max_drop_points", "sampler", "seconds",
                                         "stopped", "original", "latency")},
              "goals": rows, "best": {k: summary["best"].get(k) for k in keep} if summary["best"] else None,
              "candidates": [{k: c.get(k) for k in keep} for c in summary["candidates"]],
              "failed": summary["failed"]}
    out = str(summary["out"]).rstrip("/") + "/"  # folders relative to the search's --out: no machine path in results
    text = json.dumps(record, indent=1, default=str).replace(json.dumps(out)[:-1], '"')
    (RESULTS / f"{name}.json").write_text(text)
    lines = [(f"# studio search on the demo CNN ({summary['executor']}, {summary['workers']} workers, "
              f"{summary['seconds'] / 60:.0f} min, objective {'+'.join(summary['objectives'])}, "
              f"max drop {summary['max_drop_points']} points)"), "",
             "| goal | measured | |", "|---|---|---|"]
    lines += [f"| {r['goal']} | {r['measured']} | {'met' if r['met'] else 'NOT met'} |" for r in rows]
    lines += ["", "| trial | landed (s) | recipe | quality | drop | shipped | x smaller | latency ratio | front |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(summary["candidates"], key=lambda c: c["landed_s"]):
        lines.append(f"| {c['trial']} | {c['landed_s']:.0f} | {c['recipe']['name']}{' (shipped)' if c.get('warm_start') else ''} "
                     f"| {c['quality']:.2%} | {c['quality_drop_points']:.2f} | {c['shipped_bytes']:,} | {c['x_smaller']}x "
                     f"| {c['latency_ratio']} | {'*' if c['pareto'] else ''} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--objective", default="size")
    parser.add_argument("--batch", type=int, default=1, help="latency batch size of the search")
    parser.add_argument("--out", default="/tmp/studio-search-bench")
    parser.add_argument("--summarize", help="a search already run into this folder: no new candidate")
    args = parser.parse_args()
    if args.summarize:  # read back in-process (no new candidate), the executor as the search ran
        path = Path(args.summarize) / "search.json"
        ran = json.loads(path.read_text())
        summary = run_search(Path(args.summarize), 0, 1, args.objective, args.batch)
        summary.update(executor=ran["executor"], workers=ran["workers"], seconds=ran["seconds"])
        path.write_text(json.dumps(summary, indent=2, default=str))  # as the search ran, not this read-back
    else:
        summary = run_search(Path(args.out), args.minutes, args.workers, args.objective, args.batch)
    rows = goals(summary)
    write(summary, rows)
    for r in rows:
        print(f"{'met    ' if r['met'] else 'NOT met'}  {r['goal']}: {r['measured']}")


if __name__ == "__main__":
    main()
