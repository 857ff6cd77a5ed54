"""The search's goals (issue 11) on the demo CNN: `studio search` with two local Ray workers, then
the goals checked on its candidates. The shipped recipes are the search's first trials, so they
are measured in the same run, on the same machine, the same way as the candidates that must beat
them. Writes benchmarks/results/search-OBJECTIVES.json and .md (the store with every model file
stays in --out, outside the repository).

    python -m benchmarks.search                       # 30 minutes, 2 workers, size and latency
    python -m benchmarks.search --minutes 20
    python -m benchmarks.search --objective latency --batch 256
    python -m benchmarks.search --summarize OUT       # the goals of a search already in OUT

Latency here is the ratio of a candidate to the original timed in the same interleaved rounds on
its worker (the search's objective); the front's latencies are timed again in-process at the end.
Quality: the search measures every candidate on a validation split carved from the digits'
training data (its passes train and calibrate on the rest) and chooses by it; a goal's candidate
is picked the same way, then judged on the whole held-out set (which nothing picked by): the next
in line when it fails there. The shipped recipes are judged the same way: they are trials of the
run (selection numbers), and confirmed on the held-out set like the candidates that must beat them;
"at least as accurate" holds on both sets.
Times count from the moment the benchmark calls the search (Ray's start included). The machine's
load average is sampled as the search runs: the time goals are measured under that load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime
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


def settings_for(out: Path, minutes: float, workers: int, objective: str, batch: int) -> search.Settings:
    return search.Settings(search.Source.of("demo:cnn", "digits"), out, objectives=tuple(objective.split(",")),
                           max_drop=0.5, seconds=minutes * 60, workers=workers, batch=batch)


def run_search(out: Path, minutes: float, workers: int, objective: str, batch: int, record: bool = True) -> dict:
    settings = settings_for(out, minutes, workers, objective, batch)
    started = datetime.now()  # naive local time, as Optuna stamps its trials
    load, last = [os.getloadavg()[0]], time.monotonic()
    gen = search.search(settings)
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            summary = stop.value
            break
        if event.candidate is not None:
            print(f"{(datetime.now() - started).total_seconds():6.0f} s  {event.message}", flush=True)
        if time.monotonic() - last >= 10:
            load.append(os.getloadavg()[0])
            last = time.monotonic()
    load.append(os.getloadavg()[0])
    if not record:
        return summary
    bench = {"started_at": started.isoformat(), "load_1min": {
        "samples": len(load), "min": min(load), "median": statistics.median(load), "max": max(load)}}
    (out / "benchmark.json").write_text(json.dumps(bench))  # for --summarize: the search's clock and load
    return with_clock(summary, bench)


def with_clock(summary: dict, bench: dict) -> dict:
    """Each candidate's landing in seconds since the benchmark called the search (Ray's start
    included), and the load the search ran under."""
    started = datetime.fromisoformat(bench["started_at"])
    summary["benchmark"] = bench
    for c in summary["candidates"]:
        c["since_start_s"] = round((datetime.fromisoformat(c["landed_at"]) - started).total_seconds(), 1)
    return summary


def profile(summary: dict) -> dict:
    """Where a candidate's time went (its worker's own clock): the passes (training included),
    export + verification, and the rest (first model load in a worker, every stage's measurement,
    latency)."""
    rows = []
    for c in summary["candidates"]:
        result = json.loads((Path(c["folder"]) / "result.json").read_text())
        if "seconds_passes" in result:
            rows.append((result["seconds"], result["seconds_passes"], result["seconds_export"]))
    if not rows:
        return {}
    total = sum(r[0] for r in rows)
    return {"candidates": len(rows), "median_s": round(statistics.median(r[0] for r in rows), 1),
            "max_s": round(max(r[0] for r in rows), 1),
            "passes_share": round(sum(r[1] for r in rows) / total, 3),
            "export_share": round(sum(r[2] for r in rows) / total, 3)}


def q(c: dict) -> str:
    """Confirmed quality (and the selection set's, what the search saw)."""
    conf = "unconfirmed" if c["quality"] is None else f"{c['quality']:.2%}"
    return f"{conf} (selection {c['selection_quality']:.2%})"


def first_confirmed(ordered: list[dict], confirm, holds) -> dict | None:
    """The first of `ordered` (picked on the selection set) that holds on the confirmation set."""
    for c in ordered:
        confirm(c)
        if c["quality"] is not None and holds(c):
            return c
    return None


def goals(summary: dict, confirm) -> list[dict]:
    """Each goal's candidate picked on the selection set (as the search picks), judged on the
    confirmation set: confirm(c) measures it there (once; kept in the search's study)."""
    cands = summary["candidates"]
    held = summary["held_out"]
    both = (f"chosen on the {held.get('selection_set', 'selection half')}, confirmed on the "
            f"{held.get('confirmation_set', 'confirmation half')}")
    shipped = {c["warm_start"]: c for c in cands if c.get("warm_start")}
    rows = []

    def goal(text, met, measured):
        rows.append({"goal": text, "met": bool(met), "measured": measured})

    when = "since_start_s" if all("since_start_s" in c for c in cands) else "landed_s"
    early = sorted(c[when] for c in cands if c[when] <= 360)
    goal(f"at least 10 candidates in the first 6 minutes with {summary['workers']} workers", len(early) >= 10,
         f"{len(early)} candidates (the first at {early[0]:.0f} s" + (f", the 10th at {early[9]:.0f} s" if len(early) >= 10
                                                                    else "") + ")" if early else "none")
    smallest = next((c for n, c in shipped.items() if n.startswith("smallest")), None)
    if smallest:
        confirm(smallest)
        beat = sorted((c for c in cands if c["shipped_bytes"] < smallest["shipped_bytes"]
                       and c["selection_quality"] >= smallest["selection_quality"]), key=lambda c: c["shipped_bytes"])
        best = first_confirmed(beat, confirm, lambda c: c["quality"] >= smallest["quality"])
        goal(f"a candidate smaller than recipes/smallest.yaml and at least as accurate ({both})", best,
             f"smallest.yaml: {smallest['shipped_bytes']:,} bytes, {q(smallest)}; "
             + (f"trial {best['trial']}: {best['shipped_bytes']:,} bytes, {q(best)}" if best else
                f"none ({len(beat)} on the selection set)"))
    fastest = next((c for n, c in shipped.items() if n.startswith("fastest:")), None)
    if fastest:
        # a worker's timing beside another worker is a guide only: fastest.yaml and the candidates
        # at least as accurate that looked fastest there (15) or have the fewest MACs (15) are
        # timed again here, interleaved
        confirm(fastest)
        able = [c for c in cands if c["selection_quality"] >= fastest["selection_quality"] and c is not fastest]
        by_ratio = sorted(able, key=lambda c: (c["latency_ratio"] is None, c["latency_ratio"] or 0, c["macs"]))[:15]
        by_macs = sorted(able, key=lambda c: c["macs"])[:15]
        rivals = list({c["key"]: c for c in by_ratio + by_macs}.values())
        timed = retime([fastest, *rivals])
        for batch in LATENCY_BATCHES:
            base = timed[0][batch]
            beat = sorted(((c, t[batch]) for c, t in zip(rivals, timed[1:]) if t[batch] < base), key=lambda ct: ct[1])
            time_of = {id(c): t for c, t in beat}
            best = first_confirmed([c for c, _ in beat], confirm, lambda c: c["quality"] >= fastest["quality"])
            goal(f"a candidate faster than recipes/fastest.yaml at batch {batch} and at least as accurate "
                 f"({both}; timed again in-process, 1 thread, interleaved)", best,
                 f"fastest.yaml: {base:.4f} ms, {q(fastest)}; "
                 + (f"trial {best['trial']}: {time_of[id(best)]:.4f} ms ({base / time_of[id(best)]:.2f}x faster), "
                    f"{q(best)}" if best else f"none of the {len(rivals)} timed (trials {[c['trial'] for c in rivals]})"))
    within = sorted((c for c in cands if c["selection_drop_points"] <= 0.5), key=lambda c: -c["x_smaller"])
    top = first_confirmed(within, confirm, lambda c: c["quality_drop_points"] <= 0.5)
    goal(f"a candidate at least 60x smaller than the FP32 ONNX within 0.5 points ({both})",
         top and top["x_smaller"] >= 60,
         f"trial {top['trial']}: {top['x_smaller']}x, {0.0 - top['quality_drop_points']:+.2f} points confirmed "
         f"({0.0 - top['selection_drop_points']:+.2f} on the selection set)" if top else "none")
    return rows


def original_quality(summary: dict) -> dict:
    """The original's quality on the selection set and on the confirmation set (from any
    candidate's quality and drop there: a drop is the original's quality minus the candidate's)."""
    cands = summary["candidates"]
    sel = next((c["selection_quality"] + c["selection_drop_points"] / 100 for c in cands), None)
    conf = next((c["quality"] + c["quality_drop_points"] / 100 for c in cands if c.get("confirmed")), None)
    return {"selection": None if sel is None else round(sel, 6), "confirmation": None if conf is None else round(conf, 6)}


def write(summary: dict, rows: list[dict]) -> None:
    name = "search-" + "-".join(summary["objectives"])
    RESULTS.mkdir(exist_ok=True)
    keep = ("trial", "recipe", "folder", "quality", "quality_drop_points", "selection_quality", "selection_drop_points",
            "confirmed", "shipped_bytes", "x_smaller", "latency_ms",
            "latency_ratio", "latency_remeasured", "macs", "pareto", "within_budget", "warm_start", "near_shipped", "landed_s",
            "since_start_s", "seconds")
    bench = summary.get("benchmark", {})
    prof = profile(summary)
    record = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_1min_during_search": bench.get("load_1min")},
              **{k: summary[k] for k in ("executor", "workers", "objectives", "max_drop_points", "sampler", "seconds",
                                         "stopped", "original", "latency", "held_out")},
              "original_quality": original_quality(summary),
              "best_by_objective": summary.get("best_by_objective"), "candidate_time": prof,
              "goals": rows, "best": {k: summary["best"].get(k) for k in keep} if summary["best"] else None,
              "candidates": [{k: c.get(k) for k in keep} for c in summary["candidates"]],
              "failed": summary["failed"]}
    out = str(summary["out"]).rstrip("/") + "/"  # folders relative to the search's --out: no machine path in results
    text = json.dumps(record, indent=1, default=str).replace(json.dumps(out)[:-1], '"')
    (RESULTS / f"{name}.json").write_text(text)
    lines = [(f"# studio search on the demo CNN ({summary['executor']}, {summary['workers']} workers, "
              f"{summary['seconds'] / 60:.0f} min, objective {'+'.join(summary['objectives'])}, "
              f"max drop {summary['max_drop_points']} points)"), "",
             f"Sampler: {summary['sampler']} (Optuna), the quality budget as a constraint. "
             f"{os.cpu_count()} cores shared with other jobs"
             + (f": 1-minute load average during the search {bench['load_1min']['min']:.1f}-"
                f"{bench['load_1min']['max']:.1f} (median {bench['load_1min']['median']:.1f}), so the time goals "
                "were measured under that load" if bench.get("load_1min") else "") + ". "
             + (f"A candidate's time on its worker: median {prof['median_s']} s, max {prof['max_s']} s; the passes "
                f"(training included) {prof['passes_share']:.0%} of it, export + verification "
                f"{prof['export_share']:.0%}, the rest the worker's first model load and the measurements. "
                if prof else "")
             + "Landed: seconds since the benchmark called the search (Ray's start included).", "",
             "| goal | measured | |", "|---|---|---|"]
    lines += [f"| {r['goal']} | {r['measured']} | {'met' if r['met'] else 'NOT met'} |" for r in rows]
    held = summary["held_out"]
    lines += ["", f"Quality: on the {held['confirmation']} held-out samples of the "
              f"{held.get('confirmation_set', 'confirmation half')} (confirmed, for the front and the goals' "
              f"candidates; - when not), and on the {held['selection']} of the {held.get('selection_set', 'selection half')}, "
              "which the search chose by. " + held["note"] + ". "
              + ("The original: {} on the selection set, {} on the confirmation set{}.".format(
                  *(f"{v:.2%}" if v is not None else "-" for v in original_quality(summary).values()),
                  " (the demo CNN was trained on the whole training split, validation samples included: on them "
                  "it scores its training accuracy, so a selection drop is counted from there)"
                  if held.get("rule") == search.VALIDATION else "")), "",
              "| trial | landed (s) | took (s) | recipe | quality | drop | sel. quality | sel. drop | shipped | x smaller "
              "| latency ratio | front |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    when = "since_start_s" if all("since_start_s" in c for c in summary["candidates"]) else "landed_s"
    for c in sorted(summary["candidates"], key=lambda c: c[when]):
        lines.append(f"| {c['trial']} | {c[when]:.0f} | {c.get('seconds') or 0:.0f} | {c['recipe']['name']}"
                     f"{' (shipped)' if c.get('warm_start') else ' (near shipped)' if c.get('near_shipped') else ''} "
                     f"| {'-' if c['quality'] is None else format(c['quality'], '.2%')} "
                     f"| {'-' if c['quality_drop_points'] is None else format(c['quality_drop_points'], '.2f')} "
                     f"| {c['selection_quality']:.2%} | {c['selection_drop_points']:.2f} "
                     f"| {c['shipped_bytes']:,} | {c['x_smaller']}x "
                     f"| {c['latency_ratio']} | {'*' if c['pareto'] else ''} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--objective", default="size,latency")
    parser.add_argument("--batch", type=int, default=1, help="latency batch size of the search")
    parser.add_argument("--out", default="/tmp/studio-search-bench")
    parser.add_argument("--summarize", help="a search already run into this folder: no new candidate")
    args = parser.parse_args()
    if args.summarize:  # read back in-process (no new candidate), the executor as the search ran
        path = Path(args.summarize) / "search.json"
        ran = json.loads(path.read_text())
        clock = Path(args.summarize) / "benchmark.json"  # the search's own clock and load, not this read-back's
        bench = json.loads(clock.read_text()) if clock.is_file() else None
        summary = run_search(Path(args.summarize), 0, 1, args.objective, args.batch, record=False)
        summary.update(executor=ran["executor"], workers=ran["workers"], seconds=ran["seconds"])
        if bench is not None:
            summary = with_clock(summary, bench)
        path.write_text(json.dumps(summary, indent=2, default=str))  # as the search ran, not this read-back
    else:
        summary = run_search(Path(args.out), args.minutes, args.workers, args.objective, args.batch)
    folder = Path(args.summarize or args.out)
    confirm = search.confirmer(settings_for(folder, 0, 1, args.objective, args.batch))
    rows = goals(summary, confirm)
    write(summary, rows)  # after the goals: the candidates they confirmed are written confirmed
    for r in rows:
        print(f"{'met    ' if r['met'] else 'NOT met'}  {r['goal']}: {r['measured']}")


if __name__ == "__main__":
    main()
