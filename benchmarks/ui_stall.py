"""The longest event-loop stall of the studio window during a demo run (goal: < 50 ms).

A QTimer fires every 5 ms on the UI thread and records the gap since its last tick; a gap much
longer than 5 ms means the window could not repaint or react for that long. Measured over the
whole job a user does: open the demo model (graph, layout, stats), run the demo recipe
(prune 90 % + fine-tune, static INT8, measurement, latency), show the INT8 stage.

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/ui_stall.py

`--open FILE` (or `--bert`: a BERT-base-sized encoder exported to ONNX first, 430 MB, as in
graph_open.py) measures opening that file instead, twice (the second open also frees the
first model), each until its weight statistics are shown too, and names the steps that ran
during each gap over 30 ms, on either thread: parse, tensor checks, graph, layout, statistics,
and the UI thread's handling of the result. `seconds`: open to drawn; `with_stats_s`: to the
statistics.
Writes results/ui_stall_open.json.

`--bert-run` (with `--open FILE` or the exported BERT-base) opens the model, then runs
`--recipe` (default recipes/int8.yaml) on it with random data for `--seconds` (60) and cancels:
each stall over 30 ms with the wrapped steps (RUN_STEPS) that ran in it and where the worker
threads were at the tick just after it. Writes results/ui_stall_run.json.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("STUDIO_SETTINGS", str(Path(tempfile.mkdtemp()) / "settings.ini"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's studio, not an installed one
OUT = Path(__file__).parent / "results" / "ui_stall.json"


class StallMeter:
    def __init__(self, interval_ms: int = 5):
        from PySide6.QtCore import QTimer

        self.gaps: list[float] = []
        self.ticks: list[float] = []  # when each tick came (perf_counter)
        self.cpu: list[float] = []  # this process's CPU time at each tick (its threads, not children)
        self.waits: list[tuple[float, float, int, float]] = []  # at each tick: _waits()
        self.last = None
        self.where = None  # callable naming what the window is doing, for the worst gaps
        self.worst: list[tuple[float, str]] = []
        self.worst_all: list[str] = []  # where, for each gap over 30 ms in order
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)

    def _tick(self):
        now = time.perf_counter()
        self.ticks.append(now)
        self.cpu.append(time.process_time())
        self.waits.append(_waits())
        if self.last is not None:
            gap = (now - self.last) * 1000
            self.gaps.append(gap)
            if gap > 30 and self.where is not None:
                here = self.where()
                self.worst.append((round(gap, 1), here))
                self.worst_all.append(here)
        self.last = now

    def start(self):
        self.gaps, self.ticks, self.cpu, self.last, self.worst, self.worst_all = [], [], [], None, [], []
        self.waits = []
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        g = sorted(self.gaps) or [0.0]
        return {"ticks": len(self.gaps), "max_ms": round(g[-1], 1), "p99_ms": round(g[int(0.99 * (len(g) - 1))], 1),
                "median_ms": round(g[len(g) // 2], 1), "over_50ms": sum(x > 50 for x in g),
                "gaps_over_30ms_during": sorted(self.worst, reverse=True)[:8]}


TICK_MS = 1000 / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


def _waits() -> tuple[float, float, int, float]:
    """What the window's thread may have waited on, as running totals: its own time waiting for a
    core (ms, /proc/thread-self/schedstat), the machine's time with some task stalled on I/O (ms,
    /proc/pressure/io), this process's page faults that read the disk (/proc/self/stat), and the
    time the virtual machine's host ran something else on our CPUs (ms, summed over the CPUs,
    /proc/stat's steal: counted in 10 ms ticks). Zeros where Linux does not say."""
    runq = io = steal = 0.0
    faults = 0
    try:
        runq = int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e6
        io = int(Path("/proc/pressure/io").read_text().split("total=")[1].split()[0]) / 1e3
        faults = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[9])
        with open("/proc/stat") as f:
            steal = int(f.readline().split()[8]) * TICK_MS
    except (OSError, ValueError, IndexError):
        pass
    return runq, io, faults, steal


def _stall(meter, i: int, t: float, steps) -> dict:
    """Gap i of the meter as a row: when, how long, this process's CPU time in it (a gap the process
    spent computing, a worker holding the GIL or UI work, has cpu_ms near ms; one where the OS ran
    other processes has little), the window's thread's wait for a core, the machine's I/O stall
    time, this process's disk-reading page faults and the CPU time the host took from the virtual
    machine within it, and the steps running."""
    ticks, cpu, waits = meter.ticks, meter.cpu, meter.waits
    (q0, io0, f0, s0), (q1, io1, f1, s1) = waits[i], waits[i + 1]
    return {"at_ms": round((ticks[i] - t) * 1000), "ms": round((ticks[i + 1] - ticks[i]) * 1000, 1),
            "cpu_ms": round((cpu[i + 1] - cpu[i]) * 1000, 1), "core_wait_ms": round(q1 - q0, 1),
            "io_stall_ms": round(io1 - io0, 1), "disk_faults": f1 - f0, "host_steal_ms": round(s1 - s0),
            "during": steps.during(ticks[i], ticks[i + 1])}


def wait(app, condition, timeout=600.0):
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError
        app.processEvents()
        time.sleep(0.001)


# what may hold the UI thread (or the GIL it needs) while a model opens: module, function
OPEN_STEPS = [("onnx", "load_model"), ("studio.core.io.onnx_child", "Parser.parse"),
              ("studio.core.io.onnx_child", "_read_located"), ("studio.core.io.onnx_io", "load_external"),
              ("studio.core.io.file_tensors", "FileTensors.fill"),
              ("studio.core.io.onnx_io", "check_tensors"),
              ("studio.core.graph", "build_graph"), ("studio.qt.layout", "layout"),
              ("studio.core.stats", "layer_stats"), ("studio.qt.main_window", "MainWindow._opened"),
              ("studio.qt.session", "Session.set_model"), ("studio.qt.session", "Session.set_stats"),
              ("studio.qt.compat", "collect_due_garbage")]


class Steps:
    """Wraps functions to record when each ran and on which thread (benchmark only)."""

    def __init__(self, names):
        self.spans: list[tuple[float, float, str]] = []
        for module, attr in names:
            try:  # (a step an older checkout lacks is left out: the same meter measures both)
                owner = importlib.import_module(module)
                *outer, name = attr.split(".")
                for part in outer:
                    owner = getattr(owner, part)
                func = getattr(owner, name)
            except (ImportError, AttributeError):
                continue
            setattr(owner, name, self._wrap(func, attr))

    def _wrap(self, func, label):
        @functools.wraps(func)
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                where = "UI" if threading.current_thread() is threading.main_thread() else "worker"
                self.spans.append((t, time.perf_counter(), f"{label} [{where}]"))
        return timed

    def during(self, start: float, end: float) -> list[str]:
        return [f"{n} {(b - a) * 1000:.0f} ms" for a, b, n in self.spans if a < end and b > start]


def open_file(path: str) -> int:
    steps = Steps(OPEN_STEPS)  # before the app connects the collector and the window imports them
    from studio.qt.app import create_app

    app = create_app()
    from studio.qt.main_window import MainWindow

    meter = StallMeter()
    w = MainWindow(warm_up=True)
    w.resize(1280, 800)
    w.show()
    wait(app, lambda: not w.tasks.running())
    opens = []
    for k in range(2):
        steps.spans.clear()
        meter.start()
        t = time.perf_counter()
        generation = w.session.generation
        w.open_path(path)
        wait(app, lambda g=generation: w.session.generation != g and not w.tasks.running())
        drawn = time.perf_counter() - t
        # and the weight statistics a large model's graph is drawn without (they follow on a worker)
        wait(app, lambda: not w.session.current.stats_pending and not w.tasks.running())
        with_stats = time.perf_counter() - t
        for _ in range(100):  # let the views repaint
            app.processEvents()
            time.sleep(0.002)
        result = meter.stop()
        ticks = meter.ticks
        stalls = [_stall(meter, i, t, steps) for i in range(len(ticks) - 1) if ticks[i + 1] - ticks[i] > 0.03]
        busy = max([min(s["ms"], s["cpu_ms"]) for s in stalls] or [0.0])
        opens.append({"open": k + 1, "seconds": round(drawn, 2), "with_stats_s": round(with_stats, 2),
                      "max_ms": result["max_ms"],
                      "max_busy_ms": round(busy, 1),
                      "p99_ms": result["p99_ms"], "over_50ms": result["over_50ms"], "stalls_over_30ms": stalls,
                      "steps": [{"step": n, "start_ms": round((a - t) * 1000), "ms": round((b - a) * 1000)}
                                for a, b, n in sorted(steps.spans)]})
    w.shutdown()
    w.close()
    worst = max(o["max_ms"] for o in opens)
    result = {"benchmark": "ui_stall_open", "file": Path(path).name, "mb": round(Path(path).stat().st_size / 1e6, 1),
              "goal_ms": 50, "longest_stall_ms": worst, "ok": worst < 50, "opens": opens,
              "longest_busy_stall_ms": max(o["max_busy_ms"] for o in opens),
              "note": "a step on a worker shows in a stall when it holds the GIL (one long C call); "
                      "max_busy_ms counts of each stall only the CPU time this process used in it (min of "
                      "the gap and the process's CPU time), leaving out time the OS gave other processes",
              "load_average": os.getloadavg(),
              "platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
              "qpa": os.environ["QT_QPA_PLATFORM"]}
    out = OUT.with_name("ui_stall_open.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


# what may hold the GIL on a job's worker while a recipe runs on a large model: module, function
RUN_STEPS = [("studio.core.model", "Model.copy"), ("studio.core.io.file_tensors", "FileTensors.fill"),
             ("studio.core.convert", "session"), ("studio.core.evaluate", "onnx_bytes"),
             ("studio.core.passes.quantize", "_save"), ("studio.core.passes.quantize", "_pre_process"),
             ("studio.core.passes.quantize", "_check_session_in_child"),
             ("studio.core.passes.quantize", "_calibrator"), ("studio.core.passes.quantize", "_Trial.ranges"),
             ("studio.core.passes.quantize", "_Trial.run"),
             ("studio.core.memory", "inference_ram"),
             ("onnxruntime.capi.onnxruntime_inference_collection", "InferenceSession._create_inference_session"),
             ("onnxruntime.quantization", "quantize_static"), ("onnx", "save_model"), ("onnx", "load_model"),
             ("onnx", "load_from_string"), ("studio.qt.main_window", "MainWindow._opened")]


def _worker_stacks() -> str:
    """The innermost studio/onnx frames of every thread but the UI's, where each is now: after a
    long GIL hold, near the call that held it."""
    out = []
    main = threading.main_thread().ident
    for ident, frame in sys._current_frames().items():
        if ident == main:
            continue
        names = []
        while frame is not None and len(names) < 3:
            f = frame.f_code.co_filename
            if "studio" in f or "onnx" in f:
                names.append(f"{Path(f).name}:{frame.f_lineno} {frame.f_code.co_name}")
            frame = frame.f_back
        if names:
            out.append(" < ".join(names))
    return " | ".join(out)


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM), in MB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            return next(round(int(line.split()[1]) / 1024, 1) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def bert_run(path: str, seconds: float, recipe_file: str) -> int:
    """Open `path`, then run the recipe on it (data random) for `seconds`, cancel; the stalls
    over 30 ms with the steps that ran in them and where the worker threads were just after."""
    steps = Steps(OPEN_STEPS + RUN_STEPS)
    from benchmarks import machine
    from studio.core.recipe import Recipe
    from studio.qt.app import create_app

    app = create_app()
    from studio.qt.main_window import MainWindow

    meter = StallMeter()
    w = MainWindow(warm_up=True)
    w.resize(1280, 800)
    w.show()
    wait(app, lambda: not w.tasks.running())
    generation = w.session.generation
    w.open_path(path)
    wait(app, lambda: w.session.generation != generation and not w.tasks.running())
    wait(app, lambda: not w.session.current.stats_pending and not w.tasks.running())
    w.session.set_data_spec("random")
    w.session.set_recipe(Recipe.load(recipe_file))
    steps.spans.clear()
    meter.where = _worker_stacks
    meter.start()
    t = time.perf_counter()
    w.jobs.run_recipe()
    end = time.monotonic() + seconds
    while time.monotonic() < end and (w.tasks.running() or time.perf_counter() - t < 1):
        app.processEvents()
        time.sleep(0.001)
    finished = not w.tasks.running()
    w.jobs.cancel()
    result = meter.stop()
    ticks = meter.ticks
    wheres = iter(meter.worst_all)
    stalls = [{**_stall(meter, i, t, steps), "worker_after": next(wheres, "")}
              for i in range(len(ticks) - 1) if ticks[i + 1] - ticks[i] > 0.03]
    busy = max([min(s["ms"], s["cpu_ms"]) for s in stalls] or [0.0])
    try:
        wait(app, lambda: not w.tasks.running(), timeout=120)
    except TimeoutError:
        pass
    w.shutdown()
    w.close()
    out = {"benchmark": "ui_stall_run", "file": Path(path).name, "mb": round(Path(path).stat().st_size / 1e6, 1),
           "recipe": Path(recipe_file).name, "data": "random", "seconds_measured": round(seconds, 1),
           "finished_within": finished, "goal_ms": 50, "longest_stall_ms": result["max_ms"],
           "longest_busy_stall_ms": round(busy, 1), "p99_ms": result["p99_ms"], "over_50ms": result["over_50ms"],
           # CPU time the host ran something else on this virtual machine's CPUs, over the run
           "host_steal_ms": round(meter.waits[-1][3] - meter.waits[0][3]) if meter.waits else None,
           # the window's own process (its children not counted)
           "window_peak_rss_mb": _peak_rss_mb(),
           "stalls_over_30ms": sorted(stalls, key=lambda s: -s["ms"])[:25],
           "steps": [{"step": n, "start_ms": round((a - t) * 1000), "ms": round((b - a) * 1000)}
                     for a, b, n in sorted(steps.spans) if b - a > 0.005],
           "load_average": os.getloadavg(), "platform": platform.platform(), "python": sys.version.split()[0],
           "cpus": os.cpu_count(), "cpu": machine.cpu(), "qpa": os.environ["QT_QPA_PLATFORM"]}
    dest = OUT.with_name("ui_stall_run.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--open", metavar="FILE", help="measure opening this model file instead of the demo run")
    parser.add_argument("--bert", action="store_true", help="measure opening a BERT-base-sized ONNX (exported first)")
    parser.add_argument("--bert-run", action="store_true",
                        help="open a BERT-base-sized ONNX, run --recipe on it (data random), measure --seconds, cancel")
    parser.add_argument("--recipe", default=str(Path(__file__).resolve().parents[1] / "recipes" / "int8.yaml"))
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.bert_run:
        from benchmarks.graph_open import export

        run_path = args.open or str(export("bert_base", Path(tempfile.mkdtemp(prefix="ui-stall-"))))
        return bert_run(run_path, args.seconds, args.recipe)
    if args.bert:
        from benchmarks.graph_open import export

        args.open = str(export("bert_base", Path(tempfile.mkdtemp(prefix="ui-stall-"))))
    if args.open:
        return open_file(args.open)
    from studio.core.recipe import demo_recipe
    from studio.qt.app import create_app

    app = create_app()
    from studio.qt.main_window import MainWindow

    meter = StallMeter()
    phases = {}
    meter.start()
    t = time.perf_counter()
    w = MainWindow(warm_up=True)  # as `studio` starts it
    w.show()
    meter.where = lambda: "warm-up after start-up"
    wait(app, lambda: not w.tasks.running())
    phases["start_and_warm_up"] = {**meter.stop(), "seconds": round(time.perf_counter() - t, 2)}
    meter.where = lambda: w.log_panel.status.text()

    meter.start()
    t = time.perf_counter()
    w.open_demo("cnn")
    wait(app, lambda: w.session.model is not None and not w.tasks.running())
    phases["open_demo"] = {**meter.stop(), "seconds": round(time.perf_counter() - t, 2)}

    w.session.set_recipe(demo_recipe())
    meter.start()
    t = time.perf_counter()
    w.jobs.run_recipe()
    wait(app, lambda: w.session.runs and not w.tasks.running())
    phases["demo_run"] = {**meter.stop(), "seconds": round(time.perf_counter() - t, 2),
                          "recipe": [s.label() for s in w.session.recipe.passes]}

    meter.start()
    t = time.perf_counter()
    w.show_stage(w.session.runs[0].id, 2)
    wait(app, lambda: w.session.current.index == 2 and not w.tasks.running())
    for _ in range(50):  # let the views repaint
        app.processEvents()
        time.sleep(0.002)
    phases["show_int8_stage"] = {**meter.stop(), "seconds": round(time.perf_counter() - t, 2)}
    w.shutdown()
    w.close()

    worst = max(p["max_ms"] for k, p in phases.items() if k != "start_and_warm_up")
    result = {"benchmark": "ui_stall", "goal_ms": 50, "longest_stall_ms": worst, "ok": worst < 50,
              "note": "longest_stall_ms covers opening the demo, the run and showing a stage; the start-up "
                      "warm-up (imports, first torch/onnxruntime use on a worker) is reported on its own",
              "phases": phases, "timer_interval_ms": 5, "platform": platform.platform(),
              "python": sys.version.split()[0], "cpus": os.cpu_count(), "qpa": os.environ["QT_QPA_PLATFORM"]}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
