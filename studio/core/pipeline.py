"""The pipeline: run a recipe's passes in order, keep every stage's model and measurement.

Stage 0 is the original model; stage k is the model after the k-th enabled pass. Given the
stages of an earlier run, the steps whose recipe prefix is unchanged are reused, so editing
pass 3 does not redo passes 1-2 (NNCF's run_from_step does the same).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field

from .convert import light_onnx, to_onnx_proto
from .data import Data
from .errors import Cancelled, StudioError
from .evaluate import Measurement, measure_latency_all, measure_steps
from .memory import release
from .model import Model
from .passes.base import Context
from .recipe import Recipe, RecipeStep
from .training import trained_samples_note

LATENCY_BUDGET_S = 60.0  # seconds per batch size, every stage together (see run)
RAM_AT = 0.95  # where in the original's step its RAM child starts (with measure_ram)


@dataclass
class Progress:
    stage: int  # the stage being worked on (0 = original / measuring)
    stages: int  # how many steps the run has (passes + measuring the original + latency)
    fraction: float  # within this step, 0..1
    message: str

    @property
    def overall(self) -> float:
        return min(1.0, (self.stage + self.fraction) / max(1, self.stages))


@dataclass
class Stage:
    index: int
    name: str  # "original" or the pass id
    label: str  # for tables and the chart: "2 quantize.int8_static"
    model: Model
    steps: list[RecipeStep] = field(default_factory=list)  # the recipe up to this stage
    record: dict = field(default_factory=dict)  # per layer: what the pass changed
    summary: str = ""
    warnings: list[str] = field(default_factory=list)
    measurement: Measurement | None = None
    pass_warnings: list[str] = field(default_factory=list)  # the pass's own, without this run's speed ones
    seconds: float = 0.0  # time the pass took
    tries: list[dict] = field(default_factory=list)  # variants the pass tried and what each measured
    _onnx: object = None

    def onnx(self):
        """The stage as the ONNX model it would ship as (exported once, then cached)."""
        if self._onnx is None:
            self._onnx = to_onnx_proto(self.model)
        return self._onnx

    def onnx_parts(self):
        """(onnx(), None), or for an ONNX file the window opened (proto, its tensors still in the
        user's file) without reading those into it (convert.light_onnx): what measuring takes."""
        if self._onnx is None and self.model.is_onnx:
            return light_onnx(self.model)
        return self.onnx(), None

    def as_dict(self) -> dict:
        m = self.measurement.as_dict() if self.measurement else {}
        return {
            "index": self.index, "name": self.name, "label": self.label,
            "framework": self.model.framework, "summary": self.summary, "warnings": self.warnings,
            "seconds": round(self.seconds, 3), "quality": m.get("quality"),
            "size_bytes": m.get("size_bytes"), "zip_bytes": m.get("zip_bytes"),
            "latency_ms": m.get("latency_ms"), "measurement": m,
            "recipe": [{"id": s.id, **s.options} for s in self.steps], "layers": self.record,
            "tries": self.tries,
        }


@dataclass
class Run:
    id: str
    recipe: Recipe
    stages: list[Stage]
    data_name: str = ""
    runtimes: tuple[str, ...] = ("ort",)  # where latency was measured (core/runtimes.py)

    def as_dict(self) -> dict:
        return {"id": self.id, "recipe": self.recipe.to_dict(), "data": self.data_name,
                "runtimes": list(self.runtimes), "stages": [s.as_dict() for s in self.stages]}


def _mapped(steps, stage: int, stages: int, start: float, end: float, prefix: str):
    """Progress of a sub-step that yields (fraction, message), mapped into [start, end] of this
    step; returns the sub-step's value."""
    while True:
        try:
            fraction, message = next(steps)
        except StopIteration as stop:
            return stop.value
        yield Progress(stage, stages, start + (end - start) * fraction, prefix + message)


def run_titles(runs: list[Run]) -> dict[str, str]:
    """run id -> '#2 prune 90% + INT8': numbered in order, named after the recipe (or its passes
    when it has no name of its own); a run of the same recipe on the same data is marked a re-run."""
    titles: dict[str, str] = {}
    seen: dict[tuple, int] = {}
    for k, run in enumerate(runs, 1):
        recipe = run.recipe
        name = recipe.name if recipe.name and recipe.name != "recipe" else \
            " → ".join(s.id for s in recipe.enabled_steps()) or "no passes"
        key = (repr(recipe.to_dict()["passes"]), run.data_name)
        again = f" (re-run of #{seen[key]})" if key in seen else ""
        seen.setdefault(key, k)
        titles[run.id] = f"#{k} {name}{again}"
    return titles


SLOWER = 1.10  # a stage this much slower than the one before it gets a warning
NO_GAIN = 0.95  # "faster" means at least 5 % less time; less is within the noise of these machines


def speed_warnings(before: Measurement, after: Measurement) -> list[str]:
    """Honest speed: say where a pass shrank the work on paper but not the measured time, or
    made the model slower (measured in the same interleaved run)."""
    if not before or not after or not before.latency_ms or not after.latency_ms:
        return []
    batch = max(b for b in before.latency_ms if b in after.latency_ms)
    ratio = after.latency_ms[batch] / before.latency_ms[batch]
    warnings = []
    if ratio > SLOWER:
        warnings.append(f"{ratio:.2f}x slower than the stage before at batch {batch} (measured)")
    elif before.macs and after.macs and after.macs < 0.8 * before.macs and ratio > NO_GAIN:
        warnings.append(f"{before.macs / after.macs:.1f}x fewer MACs but no measured speed-up at batch {batch} "
                        f"({1 / ratio:.2f}x): the runtime does not turn this saving into time")
    elif after.nonzeros < 0.8 * before.nonzeros and ratio > NO_GAIN and after.macs >= before.macs:
        warnings.append(f"{before.nonzeros / max(1, after.nonzeros):.1f}x fewer nonzero weights but no measured speed-up: "
                        "dense kernels compute the zeros; the gain is in the zipped size")
    return warnings


def _same_steps(a: list[RecipeStep], b: list[RecipeStep]) -> bool:
    return [(s.id, s.options) for s in a] == [(s.id, s.options) for s in b]


def run(
    model: Model,
    recipe: Recipe,
    data: Data | None,
    *,
    measure_stages: bool = True,
    latency_batches: tuple[int, ...] = (1, 32),
    threads: int = 1,
    latency_rounds: int = 7,
    latency_budget_s: float | None = LATENCY_BUDGET_S,
    cancel_event: threading.Event | None = None,
    previous: list[Stage] | None = None,
    seed: int = 0,
    evaluator=None,
    measure_ram: bool = False,
    runtimes: tuple[str, ...] = ("ort",),
) -> Generator[Progress, None, Run]:
    """Apply the recipe's enabled passes to `model` (never changed) and measure every stage.
    A set `cancel_event` raises Cancelled at the next step; nothing of the run is returned.
    `evaluator` (plugins.Evaluator; default: the one the recipe names) measures the quality.
    `measure_ram`: also the RAM each stage takes to run (studio.core.memory: a child process
    per stage, ~1-2 s each). `runtimes`: where latency is measured besides onnxruntime (always):
    each stage is exported for the others (core/runtimes.py: seconds per stage) and timed at
    batch 1 in onnxruntime's rounds. `latency_budget_s`: seconds the latency rounds of one batch
    size may take; a model too slow for `latency_rounds` in it is timed in fewer (never under 3,
    the count is kept with the numbers): BERT-base's rounds at batch 32 alone took ~6 minutes."""
    cancel_event = cancel_event or threading.Event()
    if evaluator is None and recipe.evaluator:
        from .plugins import evaluator as find_evaluator

        evaluator = find_evaluator(recipe.evaluator)
    steps = recipe.enabled_steps()
    passes = [s.build() for s in steps]  # bad options fail here, before any work
    ram_step = measure_stages and measure_ram and data is not None
    if measure_stages:
        from . import runtimes as rt

        runtimes = rt.check(runtimes)  # an unknown or missing runtime is refused before the work
    others = [r for r in runtimes if r != "ort"] if measure_stages and data is not None else []
    latency_step = measure_stages and bool(latency_batches or others)
    stages_total = (len(passes) + 1 + (1 if latency_step else 0) + (1 if others else 0)
                    + (1 if ram_step else 0))
    context = Context(data=data, original=model, seed=seed, cancel_event=cancel_event,
                      latency_batches=tuple(latency_batches or ()))

    def check():
        if cancel_event.is_set():
            raise Cancelled()

    # problems known before the work starts: a pass that cannot take the model it will get
    current = model
    for p in passes:
        if p.needs_data and data is None:
            raise StudioError(f"{p.id} needs data: choose evaluation data")

    original = Stage(0, "original", "0 original", model)
    stages = [original]
    reference = None
    if measure_stages:
        if data is None:
            raise StudioError("measuring needs data: digits, a .npz, an image folder or random")
        yield Progress(0, stages_total, 0.0, "measuring the original model")
        # the ONNX form of the same model is reused; the measurement never is: a number shown for an
        # earlier run must not change when this run measures latency (MEASURING.md)
        if previous and previous[0].model is model:
            original._onnx = previous[0]._onnx
        what = "measuring the original model: "
        yield Progress(0, stages_total, 0.0, what + "exporting to ONNX")
        # the reference outputs are the original's quality outputs (the same session settings on
        # the same inputs): the original runs on them once, measured and kept in one step
        box: dict = {}
        proto, tensors = original.onnx_parts()
        original.measurement = yield from _mapped(
            measure_steps(model, data, None, proto, cancel_event, evaluator, keep=box, is_reference=True,
                          tensors=tensors),
            0, stages_total, 0.0, RAM_AT if ram_step else 1.0, what)
        reference = box["outputs"]
        del proto, tensors
        release()  # the file, the session and the zip's buffers of the original's measurement
        if ram_step:
            # the original's RAM child now, while this process holds the original alone: at the RAM step after
            # the passes it holds every stage beside the child (BERT-base: ~920 MB + the child's ~900 MB, over
            # the 3x-model budget of benchmarks/scale.py; here ~640 MB + the child's)
            check()
            yield Progress(0, stages_total, RAM_AT, what + "RAM, in a fresh process")
            _measure_ram(original, data, threads)
    check()

    current = model
    for i, p in enumerate(passes, 1):
        prefix = steps[:i]
        old = previous[i] if previous and len(previous) > i else None
        if old is not None and _same_steps(old.steps, prefix) and all(
            previous[j].model is stages[j].model for j in range(i)
        ):
            stage = Stage(i, old.name, old.label, old.model, old.steps, old.record, old.summary,
                          list(old.pass_warnings), seconds=old.seconds, pass_warnings=list(old.pass_warnings),
                          tries=old.tries, _onnx=old._onnx)  # a new stage: the earlier run's keeps its own numbers
            if measure_stages:
                proto, tensors = stage.onnx_parts()
                stage.measurement = yield from _mapped(
                    measure_steps(stage.model, data, reference, proto, cancel_event, evaluator, tensors=tensors),
                    i, stages_total, 0.9, 1.0, f"{p.id}: unchanged, reused; measuring: ")
            stages.append(stage)
            current = old.model
            yield Progress(i, stages_total, 1.0, f"{p.id}: unchanged, reused")
            continue
        problems = p.check(current)
        if problems:
            raise StudioError(f"step {i} ({p.id}): {problems[0]}")
        warnings = p.warnings(current)
        start = time.perf_counter()
        gen = p.apply(current, context)
        try:
            while True:
                check()
                try:
                    fraction, message = next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
                yield Progress(i, stages_total, 0.9 * fraction if measure_stages else fraction, f"{p.id}: {message}")
        finally:
            gen.close()
        seconds = time.perf_counter() - start
        release()  # the pass's own copies of the model, before the stage is measured
        summary = result.summary
        trained = trained_samples_note(result.model.obj) if result.model.is_torch else None
        if trained:  # training at a file's fixed batch left samples out of each epoch
            summary = f"{summary}; {trained}" if summary else trained
            warnings = [*warnings, trained]
        pass_warnings = list(dict.fromkeys(warnings + result.warnings))
        stage = Stage(
            i, p.id, f"{i} {p.id}", result.model, prefix, result.layers, summary,
            list(pass_warnings), seconds=seconds, pass_warnings=pass_warnings, tries=result.tries,
        )
        if measure_stages:
            yield Progress(i, stages_total, 0.9, f"{p.id}: measuring: exporting to ONNX")
            proto, tensors = stage.onnx_parts()
            stage.measurement = yield from _mapped(
                measure_steps(stage.model, data, reference, proto, cancel_event, evaluator, tensors=tensors),
                i, stages_total, 0.9, 1.0, f"{p.id}: measuring: ")
        stages.append(stage)
        current = result.model
        del gen, result
        release()  # what the pass and the stage's measurement let go (BERT-base: copies of 440 MB)
        check()

    files: dict[str, list] = {}  # runtime -> per stage: (the file it loaded, its input) or None
    if latency_step:
        from .runtimes import threads as runtime_threads

        k = len(passes) + 1
        # ExecuTorch's XNNPACK programs take the threadpool of the moment they are loaded: set the
        # run's thread count first, load, measure, and let the programs go before it is restored
        with runtime_threads(others, threads):
            calls: dict[str, list] = {}
            if others and data is not None:
                calls = yield from _runtime_calls(stages, data, others, k, stages_total, check, threads)
                k += 1
            parts = [s.onnx_parts() for s in stages]
            gen = measure_latency_all([proto for proto, _ in parts], model.input_shape, latency_batches, threads,
                                      latency_rounds, cancel=check, signature=model.signature, others=calls,
                                      budget_s=latency_budget_s, tensors=[t for _, t in parts])
            del parts
            try:
                while True:
                    try:
                        fraction, message = next(gen)
                    except StopIteration as stop:
                        latencies, on_others, rounds_timed = stop.value
                        break
                    yield Progress(k, stages_total, fraction, message)
            finally:
                gen.close()
                del gen
                for name, runners in calls.items():  # what RAM is measured on, in a fresh process each
                    files[name] = [(r.file, r.args) if r is not None else None for r in runners]
                calls.clear()
        for stage, lat, more in zip(stages, latencies, on_others):
            measured = stage.measurement
            assert measured is not None  # every stage was measured before its latency
            measured.latency_ms = lat
            measured.latency_rounds = dict(rounds_timed)
            measured.runtime_ms = more
            measured.threads = threads
        for before, after in zip(stages, stages[1:]):
            for warning in speed_warnings(before.measurement, after.measurement):
                if warning not in after.warnings:
                    after.warnings.append(warning)
    if ram_step:
        release()  # the latency sessions: a RAM child's memory comes on top of this process's

        for i, stage in enumerate(stages):
            check()
            loaded = {name: per_stage[i] for name, per_stage in files.items() if per_stage[i] is not None}
            if i == 0 and not loaded:
                continue  # onnxruntime's RAM of the original: measured before the passes
            yield Progress(stages_total - 1, stages_total, i / len(stages), f"RAM of stage {i}, in a fresh process")
            if stage.measurement is not None:
                _measure_ram(stage, data, threads, onnx=i > 0, files=loaded)
    return Run(uuid.uuid4().hex[:8], recipe, stages, data.name if data else "",
               runtimes=("ort", *others) if measure_stages else ("ort",))


def _measure_ram(stage: Stage, data: Data, threads: int, onnx: bool = True, files: dict | None = None) -> None:
    """The stage's RAM in onnxruntime (with `onnx`) and in each runtime of `files` (name -> (the
    file it loaded, its input)), each in a fresh child process (core/memory.py)."""
    from .memory import inference_ram, runtime_ram

    measured = stage.measurement
    assert measured is not None
    if onnx:
        x1 = data.shaped(data.x_test[:1], stage.model.input_shape)
        proto, tensors = stage.onnx_parts()
        measured.ram_bytes = inference_ram(proto, x1, threads, tensors)
    for name, (program, args) in (files or {}).items():
        got = runtime_ram(name, program, args, threads)
        if got is not None:
            measured.runtime_ram_bytes[name] = got


def _runtime_calls(stages: list[Stage], data: Data, others: list[str], k: int, total: int, check, threads: int = 1):
    """Per runtime, per stage: a call running the stage once at batch 1 there, or None with a
    warning on the stage saying why it cannot reach that runtime."""
    from .runtimes import runner, title

    calls: dict[str, list] = {name: [] for name in others}
    for name in others:
        for i, stage in enumerate(stages):
            check()
            yield Progress(k, total, (others.index(name) * len(stages) + i) / (len(others) * len(stages)),
                           f"{title(name)}: exporting stage {i}")
            x1 = data.shaped(data.x_test[:1], stage.model.input_shape)
            try:
                calls[name].append(runner(name, stage.model, x1, threads))
            except Exception as exc:  # noqa: BLE001 - a converter failing its own way: one line, no number
                calls[name].append(None)
                why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                stage.warnings.append(f"{title(name)} not measured: {why}")
    return calls


def shipped_stage(run: Run) -> tuple[Stage, str]:
    """The stage the run ships and why: the recipe's `ship` choice (last, fastest or smallest)
    among the measured stages after the original within `max_drop` points of its quality.
    Speed is the latency at the largest batch measured, size the zipped file. Falls back to the
    last stage, saying why, when the stages were not measured or none is within the budget."""
    last = run.stages[-1]
    how, budget = run.recipe.ship, run.recipe.max_drop
    if how == "last" or len(run.stages) < 2:
        return last, "the last stage"
    base = run.stages[0].measurement
    measured = [s for s in run.stages[1:] if s.measurement is not None and s.measurement.quality is not None]
    if base is None or base.quality is None or not measured:
        return last, f"the last stage (stages not measured, so '{how}' could not be chosen)"
    within = [s for s in measured if 100 * (base.quality - s.measurement.quality) <= budget + 1e-9]
    if not within:
        return last, f"the last stage: no stage is within {budget:g} points of the original"
    if how == "smallest":
        pick = min(within, key=lambda s: (s.measurement.zip_bytes, -s.index))
        return pick, f"the smallest zipped file within {budget:g} points of the original"
    batches = [b for b in base.latency_ms if all(b in s.measurement.latency_ms for s in within)]
    if not batches:
        return last, "the last stage (latency not measured, so 'fastest' could not be chosen)"
    batch = max(batches)
    pick = min(within, key=lambda s: (s.measurement.latency_ms[batch], -s.index))
    why = f"the fastest at batch {batch} within {budget:g} points of the original"
    if pick is not last and last in within:
        why += f" ({last.measurement.latency_ms[batch] / pick.measurement.latency_ms[batch]:.2f}x faster than the last stage)"
    return pick, why
