"""Search: find the quality/footprint trade-off by trying many recipes, and keep every candidate.

The studio owns the space (built from the passes' configs below) and the measurement (each
candidate is one `pipeline.run` of its recipe, exported and verified); Optuna owns the sampling
(TPE, multi-objective TPE for several) and the storage (its RDB storage on SQLite in the
output folder, or a database URL); Ray, when asked for more than one worker, owns the placement.

A candidate is a plain function of (model source, recipe, data spec) -> measurements + files
(`evaluate`), so the same call runs in-process or in a Ray task. Only the driver talks to the
storage: it asks Optuna for a trial, turns its parameters into a recipe, has it evaluated, writes
the candidate's recipe, measurements and model file under `OUT/candidates/<key>/`, then tells
Optuna the result. The key hashes the model, the data and the recipe, so a rerun (after a crash
or a kill) finds every measured candidate on disk and never measures it again; trials a killed
run left RUNNING are run again.

Candidates are measured and chosen on a validation split carved from the training data (their
passes train and calibrate on the rest); the front and the best are confirmed on the whole held-out
set, which no trial decision sees (held_out_split says why, and what small data sets do instead).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from .errors import Cancelled, StudioError

# objective -> the candidate's number Optuna minimizes. Latency is the candidate's time over the
# original's, both measured in the same interleaved rounds on the same worker, so a busy machine
# moves both alike; the front is measured again in-process at the end (see remeasure_front).
OBJECTIVES = {"size": "shipped_bytes", "latency": "latency_ratio", "macs": "macs"}

INSTALL = "pip install -c constraints.txt -e '.[search]' (make setup does)"


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise StudioError(f"search needs {module}, which is not installed: {INSTALL}") from None


# ------------------------------------------------------------------------------------ the space
# The search space comes from the pass library: slots in pipeline order, each one pass (or none)
# from a list, and per pass the options searched with their ranges. Option names and defaults
# are the passes' own (checked against their Config by tests/core/test_search.py); every recipe
# built here is an ordinary recipe that `studio run` replays.

@dataclass(frozen=True)
class Opt:
    name: str  # the pass option
    kind: str  # "float" (low, high, step), "int" (low, high), "cat" (choices)
    args: tuple
    when: tuple = ()  # (option, predicate): only searched when another option of the pass passes it

    def bounds(self, max_epochs: int | None) -> tuple:
        if self.name in EPOCHS and max_epochs is not None:
            if self.kind == "int":
                return self.args[0], min(self.args[1], max(self.args[0], max_epochs))
            if self.kind == "cat":  # an epoch ladder: the rungs within the cap (at least the lowest)
                return tuple(e for e in self.args if e <= max_epochs) or self.args[:1]
        return self.args

    def suggest(self, trial, pass_id: str, max_epochs: int | None = None):
        key = f"{pass_id}.{self.name}"
        if self.kind == "float":
            low, high, step = self.args
            return round(trial.suggest_float(key, low, high, step=step), 6)
        if self.kind == "int":
            return trial.suggest_int(key, *self.bounds(max_epochs))
        return trial.suggest_categorical(key, list(self.bounds(max_epochs)))

    def contains(self, value, max_epochs: int | None = None) -> bool:
        if self.kind == "cat":
            return value in self.bounds(max_epochs)
        low, high = self.bounds(max_epochs)[:2]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            return False
        step = self.args[2] if self.kind == "float" else 1
        return step is None or abs((value - low) / step - round((value - low) / step)) < 1e-6


def _trained(max_epochs: int, rates: tuple) -> list[Opt]:
    """Recovery training: epochs (a ladder up to max_epochs), and a learning rate only when
    there are epochs."""
    return [Opt("fine_tune_epochs", "cat", tuple(e for e in LADDER if e <= max_epochs)),
            Opt("learning_rate", "cat", rates, when=("fine_tune_epochs", lambda e: e > 0))]


EPOCHS = ("fine_tune_epochs", "epochs")  # training options, capped by --max-epochs
# Training epochs are a ladder, not every integer: epochs are what a candidate costs (profiled on
# the demo CNN: ~90 % of a trained candidate's time; Ray's start, a worker's imports and model
# load, the per-stage measurements, batch-1 latency and export + verification are seconds), and
# drawn uniformly from 0-30 an untried pass averaged 15 epochs. The ladder holds every count the
# shipped recipes use (2, 10, 20), and its mean is ~9; a trial still reaches 30.
LADDER = (0, 1, 2, 3, 5, 8, 10, 15, 20, 30)
LR = (2e-4, 5e-4, 1e-3, 2e-3)
SPACE: dict[str, list[Opt]] = {
    "prune.structured": [Opt("ratio", "float", (0.1, 0.8, 0.05)), *_trained(30, LR)],
    "lowrank.svd": [Opt("energy", "float", (0.5, 0.99, 0.01)), *_trained(20, LR)],
    "distill.kd": [Opt("width", "float", (0.25, 0.75, 0.05)), Opt("epochs", "cat", (5, 8, 10, 15, 20, 30))],
    "prune.magnitude": [Opt("sparsity", "float", (0.5, 0.97, 0.01)), *_trained(30, LR)],
    "prune.nm": [Opt("n", "int", (1, 3)), *_trained(20, LR)],
    "cluster.kmeans": [Opt("bits", "int", (2, 8)), *_trained(5, (2.5e-5, 5e-5, 1e-4, 2e-4))],
    "quantize.int8_static": [Opt("method", "cat", ("minmax", "entropy", "percentile"))],
}
# slot -> the passes it may hold, in pipeline order; the first two may swap ("order")
SLOTS = {
    "structure": ("prune.structured", "lowrank.svd", "distill.kd"),
    "sparsity": ("prune.magnitude", "prune.nm"),
    "values": ("cluster.kmeans", "quantize.int8_static"),
}
NONE = "none"
ORDERS = ("structure_first", "sparsity_first")


def allowed(passes=None, max_epochs: int | None = None) -> dict[str, tuple]:
    """slot -> the passes it may hold, limited to `passes` (ids) and to passes that can train
    within `max_epochs` (distillation needs at least its lowest epoch count)."""
    def ok(pass_id):
        if passes is not None and pass_id not in passes:
            return False
        return not (max_epochs is not None and pass_id == "distill.kd" and max_epochs < SPACE[pass_id][1].args[0])

    return {slot: tuple(p for p in ids if ok(p)) for slot, ids in SLOTS.items()}


def suggest_recipe(trial, passes=None, max_epochs: int | None = None):
    """The recipe Optuna's trial picks (define-by-run: a pass's options are asked only when the
    pass is chosen, so the space stays small)."""
    from .recipe import Recipe, RecipeStep

    chosen = {slot: trial.suggest_categorical(slot, [NONE, *ids]) if ids else NONE
              for slot, ids in allowed(passes, max_epochs).items()}
    order = ["structure", "sparsity", "values"]
    both = chosen["structure"] != NONE and chosen["sparsity"] != NONE
    if both and trial.suggest_categorical("order", list(ORDERS)) == "sparsity_first":
        order = ["sparsity", "structure", "values"]
    steps = []
    for slot in order:
        pass_id = chosen[slot]
        if pass_id == NONE:
            continue
        options = {}
        for opt in SPACE[pass_id]:
            if opt.when and not opt.when[1](options.get(opt.when[0])):
                continue
            options[opt.name] = opt.suggest(trial, pass_id, max_epochs)
        steps.append(RecipeStep(pass_id, options))
    shown = [RecipeStep(s.id, s.build().options()) for s in steps]  # defaults left out of the name
    name = " + ".join(s.label() for s in shown) or "original (no passes)"
    return Recipe(steps, name=name)


def recipe_params(recipe, passes=None, max_epochs: int | None = None) -> dict | None:
    """Optuna parameters that rebuild `recipe` in this space (to warm-start from the shipped
    recipes), or None when the recipe is not in the space."""
    from .passes import registry

    slots = allowed(passes, max_epochs)
    params: dict = {slot: NONE for slot, ids in slots.items() if ids}
    slots_seen = []
    for step in recipe.enabled_steps():
        slot = next((s for s, ids in slots.items() if step.id in ids), None)
        if slot is None or slot in slots_seen:
            return None
        slots_seen.append(slot)
        params[slot] = step.id
        space = {o.name: o for o in SPACE[step.id]}
        if set(step.options) - set(space):
            return None  # an option the search does not vary: not this space's recipe
        config = registry.get(step.id).Config(**step.options)
        for opt in SPACE[step.id]:
            value = getattr(config, opt.name)
            if opt.when and not opt.when[1](getattr(config, opt.when[0])):
                continue
            if not opt.contains(value, max_epochs):
                return None
            params[f"{step.id}.{opt.name}"] = value
    if "values" in slots_seen and slots_seen[-1] != "values":
        return None  # clustering or INT8 come last in this space
    if "structure" in slots_seen and "sparsity" in slots_seen:
        params["order"] = ORDERS[slots_seen.index("structure") > slots_seen.index("sparsity")]
    return params


# pass -> (its compression knob, the direction that compresses more): a shipped recipe's
# neighbours move one knob a notch further (NEAR_NOTCH of its range, at least one step)
KNOBS = {"prune.structured": ("ratio", 1), "lowrank.svd": ("energy", -1), "distill.kd": ("width", -1),
         "prune.magnitude": ("sparsity", 1), "prune.nm": ("n", -1), "cluster.kmeans": ("bits", -1)}
NEAR_NOTCH = 0.05


def neighbours(params: dict, max_epochs: int | None = None) -> list[dict]:
    """The parameters of a recipe's neighbours that compress a notch more: one pass's knob moved
    at a time, the rest as they are (only points inside the space). Warm starts beside the shipped
    recipes: a shipped recipe is a point a person judged good; a notch further is where a search
    for something smaller (or faster) than it starts looking, not tens of random trials later."""
    out = []
    for pass_id, (knob, sign) in KNOBS.items():
        key = f"{pass_id}.{knob}"
        if key not in params:
            continue
        opt = next(o for o in SPACE[pass_id] if o.name == knob)
        if opt.kind == "float":
            low, high, step = opt.args
            notch = max(step, round((high - low) * NEAR_NOTCH / step) * step)
            value = round(params[key] + sign * notch, 6)
        else:
            value = params[key] + sign
        if opt.contains(value, max_epochs):
            out.append({**params, key: value})
    return out


def training_epochs(recipe) -> int:
    """The epochs of training a recipe asks for, all passes together (what a candidate costs)."""
    total = 0
    for step in recipe.enabled_steps():
        config = step.build().config
        total += sum(int(getattr(config, name, 0) or 0) for name in EPOCHS)
    return total


def shipped_recipes() -> list:
    """The recipes the studio ships (recipes/ beside the package in a checkout), for warm starts."""
    from .recipe import Recipe

    folder = Path(__file__).resolve().parents[2] / "recipes"
    recipes = []
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            recipes.append(Recipe.load(path))
        except StudioError:
            continue
    return recipes


# ----------------------------------------------------------------------------- one candidate

@dataclass(frozen=True)
class Source:
    """What a worker needs to build the model and the data again: plain data, so it travels to
    a Ray worker. `ident` names the model's content (a file's SHA-256) for study names and keys."""

    model: str
    data: str = "digits"
    arch: str | None = None
    trust: bool = False
    input_shape: tuple | None = None
    inputs: tuple = ()
    ident: str = ""

    @classmethod
    def of(cls, model: str, data: str, **kw) -> Source:
        if model.startswith("demo:"):
            ident = model
        else:
            digest = hashlib.sha256()
            try:
                with open(model, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
            except OSError as exc:
                raise StudioError(f"cannot read {model}: {exc.strerror or exc}") from None
            ident = f"{Path(model).name}:{digest.hexdigest()[:16]}"
        data_ident = data if data in ("digits", "random") else f"{Path(data).name}"
        return cls(model, data, ident=f"{ident}|{data_ident}", **kw)

    def load(self):
        """(model, the data as opened: its whole training and held-out splits; _loaded splits it for the search)."""
        from .data import open_data

        if self.model.startswith("demo:"):
            from . import zoo

            model = zoo.load(self.model.split(":", 1)[1])
        else:
            from . import io

            model = io.load(self.model, arch=self.arch, trust=self.trust, input_shape=self.input_shape)
        if self.inputs:
            model = model.with_signature(model.io.with_overrides(list(self.inputs)))
        model.io.check()
        return model, open_data(self.data, model.input_shape, signature=model.io)


# ------------------------------------------------------- selection data and confirmation data
# Why: the search picks its candidates (the Pareto front, `best`) by their quality on data. Over
# hundreds of trials, the ones that look best there are partly the ones the noise of those
# particular samples favoured (the winner's curse), so their quality on the same samples is
# optimistic. So the trials never see the held-out set: a VALIDATION split is carved from the
# TRAINING data once (stratified by label, a fixed seed), and every trial is measured on it (what
# the optimizer sees, what the front and `best` are chosen by), while its passes fine-tune,
# distil and calibrate on the rest of the training data only (the passes read `x_train`; the
# carved samples are not in it). The front and `best` are measured again on the WHOLE held-out
# set (in the driver, see _Confirmer), which no trial decision sees, and that is the quality the
# search reports (`quality`, `quality_drop_points`; `selection_quality` and
# `selection_drop_points` are the numbers it chose by). The whole held-out set, not half of it:
# on the demo digits 360 samples (0.28 points a sample) instead of 180 (0.56, so a 0.5-point
# budget allowed no sample lost).
# A model trained on the whole training split (the demo models were) has seen the validation
# samples: its quality there is its training accuracy, so the selection drop is judged against
# that (stricter than on unseen data); the confirmed drop is against its held-out quality.
# Too little training data to carve VALIDATION_FRACTION of it into at least MIN_VALIDATION
# samples: the earlier rule, the held-out set halved (selection half, confirmation half); and a
# held-out set under MIN_SPLIT samples is not split at all (candidates measured on all of it,
# their quality reported unconfirmed). The result's `held_out` note says which rule applied.
VALIDATION_FRACTION = 0.25  # of the training data; on the digits 360 of 1,437, as many as the held-out set
MIN_VALIDATION = 100
MIN_SPLIT = 100
SPLIT_SEED = 1  # not data.SEED: these splits are independent of the train/held-out one
# in every study name and candidate key: numbers measured under another split differ, so a
# study or a stored candidate of another rule is never continued or reused
VALIDATION = "train-validation-v2"  # selection: carved from the training data; confirmation: the whole held-out set
HALVES = "selection-half-v1"  # selection: half the held-out set; confirmation: the other half (or none)


def held_out_split(data) -> tuple:
    """(selection data, confirmation data or None, note). Selection data: what every trial
    measures on, and trains and calibrates with. With enough training data, its held-out part
    is a validation split carved from the training data (stratified when every class has two
    samples, the same every time) and its training part the rest; confirmation data is the
    data as opened (the whole held-out set). Else the held-out set halved (both halves keep
    the whole training part), or, under MIN_SPLIT held-out samples, not split at all."""
    import copy

    import numpy as np

    from .data import stratified_split

    def by_label(y) -> bool:  # data.stratified_split's own rule
        return y is not None and int(np.bincount(y).min(initial=2)) >= 2

    n, n_train = len(data.x_test), len(data.x_train)
    if int(n_train * VALIDATION_FRACTION) >= MIN_VALIDATION:
        x_tr, x_val, y_tr, y_val = stratified_split(data.x_train, data.y_train, VALIDATION_FRACTION, SPLIT_SEED)
        selection = copy.copy(data)
        selection.x_train, selection.y_train, selection.x_test, selection.y_test = x_tr, y_tr, x_val, y_val
        stratified = by_label(data.y_train)
        note = {"split": True, "rule": VALIDATION, "held_out": n, "selection": len(x_val), "confirmation": n,
                "training": len(x_tr), "stratified": bool(stratified),
                "selection_set": "validation split", "confirmation_set": "held-out set",
                "note": f"trials are measured and chosen on a validation split of {len(x_val)} samples carved from "
                        f"the training data{' by label' if stratified else ''} (their passes train and calibrate "
                        f"on the other {len(x_tr)}); the front and best are measured again on the whole held-out "
                        f"set ({n} samples), which no trial decision looks at"}
        return selection, data, note
    if n < MIN_SPLIT:
        note = {"split": False, "rule": HALVES, "held_out": n, "selection": n, "confirmation": 0,
                "selection_set": "held-out set", "confirmation_set": None,
                "note": f"the training data ({n_train} samples) is too small to carve a validation split of "
                        f"{MIN_VALIDATION} from, and the held-out set has {n} samples, fewer than {MIN_SPLIT}: not "
                        "split; every candidate's quality is measured on the samples the search selected by, so "
                        "the front's and best's quality are not confirmed (optimistic)"}
        return data, None, note
    x_sel, x_conf, y_sel, y_conf = stratified_split(data.x_test, data.y_test, 0.5, SPLIT_SEED)
    selection, confirmation = copy.copy(data), copy.copy(data)
    selection.x_test, selection.y_test = x_sel, y_sel
    confirmation.x_test, confirmation.y_test = x_conf, y_conf
    stratified = by_label(data.y_test)
    note = {"split": True, "rule": HALVES, "held_out": n, "selection": len(x_sel), "confirmation": len(x_conf),
            "stratified": bool(stratified), "selection_set": "selection half", "confirmation_set": "confirmation half",
            "note": f"the training data ({n_train} samples) is too small to carve a validation split of "
                    f"{MIN_VALIDATION} from, so the held-out set ({n} samples) is halved once"
                    f"{' by label' if stratified else ''}: trials are measured and chosen on {len(x_sel)} (selection), "
                    f"the front and best measured again on the other {len(x_conf)} (confirmation), which no trial "
                    "decision looks at"}
    return selection, confirmation, note


# per process: Source -> [model, selection data, original stage, confirmation data, split note],
# so a worker loads once. Candidates are measured (and trained, calibrated) on the selection data only.
_LOADED: dict = {}


def _loaded(source: Source):
    if source not in _LOADED:
        _LOADED.clear()
        model, data = source.load()
        selection, confirmation, note = held_out_split(data)
        _LOADED[source] = [model, selection, None, confirmation, note]
    return _LOADED[source]


def split_rule(source: Source) -> str:
    """VALIDATION or HALVES: the rule the search of this model and data measures under."""
    return _loaded(source)[4]["rule"]


def candidate_key(source: Source, recipe_dict: dict, batch: int | None) -> str:
    """batch None: a candidate measured without latency (a search whose objectives do not need it)."""
    text = json.dumps({"source": source.ident, "passes": recipe_dict["passes"], "batch": batch,
                       "held_out": split_rule(source)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def evaluate_steps(source: Source, recipe_dict: dict, batch: int | None = 1, rounds: int = 5, threads: int = 1,
                   cancel_event: threading.Event | None = None):
    """One candidate: run the recipe with the pipeline (every stage measured), export the last
    stage's file(s) and verify them. A generator of (fraction, message); returns (result, files)
    with files {name: bytes}. Never writes anywhere: the driver keeps what it returns.
    `batch` None: no latency here (quality, size and MACs only): a search that does not minimize
    latency times only its Pareto front, once it is known, in-process (see _remeasure)."""
    import tempfile

    from . import pipeline
    from .model import ONNX
    from .recipe import Recipe

    start = time.perf_counter()
    recipe = Recipe.from_dict(recipe_dict, "candidate")
    cached = _loaded(source)
    model, data, original = cached[:3]
    run = yield from _pipeline(pipeline.run(
        model, recipe, data, latency_batches=(batch,) if batch else (), threads=threads, latency_rounds=rounds,
        cancel_event=cancel_event, previous=[original] if original is not None else None))
    cached[2] = run.stages[0]  # its ONNX form is reused by this worker's next candidate
    base, final = run.stages[0].measurement, run.stages[-1]
    m = final.measurement
    clustered = any(s.id.startswith("cluster.") for s in recipe.enabled_steps())
    files, verified = {}, []
    exporting = time.perf_counter()
    as_onnx = final.model.with_obj(final.onnx(), ONNX, format="onnx")  # the very graph measured
    with tempfile.TemporaryDirectory(prefix="studio-candidate-") as tmp:
        for fmt, name in [("onnx", "model.onnx")] + ([("packed", "model.packed")] if clustered else []):
            yield 0.95, f"exporting {name} and verifying it"
            result = _export(as_onnx, Path(tmp) / name, fmt, data, cancel_event)
            files[name] = (Path(tmp) / name).read_bytes()
            verified.append({k: v for k, v in result.as_dict().items() if k != "path"} | {"file": name})
    shipped = len(files["model.packed"]) if clustered else m.size_bytes
    q0, q = base.quality, m.quality
    exported = time.perf_counter() - exporting
    lat0, lat = base.latency_ms.get(batch), m.latency_ms.get(batch)
    result = {
        "recipe": recipe.to_dict(),
        "quality": q, "quality_label": m.quality_label, "original_quality": q0,
        "quality_drop_points": None if q is None or q0 is None else round((q0 - q) * 100, 4),
        "shipped_bytes": shipped, "shipped_file": "model.packed" if clustered else "model.onnx",
        "onnx_bytes": m.size_bytes, "zip_bytes": m.zip_bytes, "original_bytes": base.size_bytes,
        "x_smaller": round(base.size_bytes / max(1, shipped), 2),
        "parameters": m.parameters, "nonzeros": m.nonzeros,
        "macs": m.macs, "original_macs": base.macs,
        "latency_ms": lat, "original_latency_ms": lat0, "latency_batch": batch, "threads": threads,
        "latency_ratio": round(lat / lat0, 4) if lat and lat0 else None,
        "latency_remeasured": False,
        "stages": [{k: v for k, v in s.as_dict().items() if k not in ("layers", "tries")} for s in run.stages],
        "verified": verified,
        "seconds": round(time.perf_counter() - start, 2),
        # where the time went: the passes (training included), export + verification; the rest is
        # the model's first load in this worker, measuring every stage and latency
        "seconds_passes": round(sum(s.seconds or 0.0 for s in run.stages[1:]), 2),
        "seconds_export": round(exported, 2),
        "worker": f"{os.uname().nodename}:{os.getpid()}",
    }
    return result, files


def _pipeline(gen):
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        yield p.overall * 0.9, p.message


def _export(model, path, fmt, data, cancel_event):
    from . import export
    from .training import drain

    def cancel():
        if cancel_event is not None and cancel_event.is_set():
            raise Cancelled()

    return drain(export.export(model, path, fmt, data=data, cancel=cancel))


def evaluate(source: Source, recipe_dict: dict, batch: int | None = 1, rounds: int = 5, threads: int = 1):
    """evaluate_steps without progress: what a Ray task runs. A StudioError comes back as
    {"error": one line}, so a recipe the model cannot take is a failed candidate, not a crash."""
    from .training import drain

    try:
        return drain(evaluate_steps(source, recipe_dict, batch, rounds, threads))
    except Exception as exc:  # noqa: BLE001 - one combination a library cannot take must not end the search
        return {"error": failure(exc)}, {}


def failure(exc: Exception) -> str:
    """A failed candidate's one line (a library's own exception named by its type)."""
    from .errors import one_line

    return one_line(exc if isinstance(exc, StudioError) else f"{type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------ the store

class Store:
    """Every candidate on disk: OUT/candidates/<key>/ holds recipe.yaml, result.json (the
    measurements of every stage, written last, so its presence means the candidate is complete)
    and the model file(s) it ships as."""

    def __init__(self, out: Path):
        self.root = Path(out) / "candidates"

    def folder(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> dict | None:
        path = self.folder(key) / "result.json"
        try:
            return json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            return None

    def save(self, key: str, result: dict, files: dict) -> None:
        from .fileio import atomic_write_bytes, atomic_write_text
        from .recipe import Recipe

        folder = self.folder(key)
        for name, blob in files.items():
            atomic_write_bytes(folder / name, blob)
        Recipe.from_dict(result["recipe"], "candidate").save(folder / "recipe.yaml")
        atomic_write_text(folder / "result.json", json.dumps({**result, "key": key}, indent=1, default=str))


# ------------------------------------------------------------------------------ the driver

@dataclass
class Settings:
    source: Source
    out: Path
    objectives: tuple = ("size",)
    max_drop: float = 0.5  # quality points the candidate may lose against the original
    seconds: float = 600.0  # no new candidate starts after this; running ones finish
    workers: int = 1
    ray_address: str | None = None
    trials: int | None = None  # at most this many candidates in the study (earlier runs count)
    batch: int = 1  # latency batch size
    threads: int = 1  # onnxruntime threads for latency
    rounds: int = 5  # interleaved latency rounds within a candidate (7 when re-measuring the front)
    storage: str | None = None  # a database URL; default SQLite in `out`
    seed: int = 0
    warm_start: bool = True
    passes: tuple | None = None  # only these pass ids (default: every pass in SPACE)
    max_epochs: int | None = None  # cap on training epochs of every pass (0: no training)

    def __post_init__(self):
        self.out = Path(self.out)
        self.objectives = tuple(self.objectives)
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if not self.objectives or unknown:
            raise StudioError(f"unknown objective {unknown[0] if unknown else '(none)'!r}: "
                              f"choose from {', '.join(OBJECTIVES)} (several: size,latency)")
        if self.workers < 1:
            raise StudioError("--workers must be 1 or more")
        if self.passes is not None:
            self.passes = tuple(self.passes)
            unknown = [p for p in self.passes if p not in SPACE]
            if unknown:
                raise StudioError(f"the search does not vary {unknown[0]!r}; it searches {', '.join(SPACE)}")

    @property
    def study_name(self) -> str:
        # a rerun of the same command continues the same study
        name = (f"{self.source.ident}|{'+'.join(self.objectives)}|max_drop={self.max_drop:g}|batch={self.batch}"
                f"|{split_rule(self.source)}")
        if self.passes is not None:
            name += f"|passes={','.join(sorted(self.passes))}"
        if self.max_epochs is not None:
            name += f"|max_epochs={self.max_epochs}"
        return name

    @property
    def timed_batch(self) -> int | None:
        """The batch a candidate's latency is measured at on its worker, or None when no
        objective is latency: then only the Pareto front is timed, after the search."""
        return self.batch if "latency" in self.objectives else None

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out / 'search.db').resolve()}"


@dataclass
class Event:
    """What the search reports as it goes: progress, or a candidate that has just landed."""

    fraction: float
    message: str
    candidate: dict | None = None
    detail: bool = False  # a step within a candidate (a log may leave it out)
    earlier: list | None = None  # at the start: every candidate earlier runs of this search measured


def _open_study(settings: Settings):
    optuna = _need("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        study = optuna.create_study(study_name=settings.study_name, storage=settings.storage_url,
                                    directions=["minimize"] * len(settings.objectives), load_if_exists=True)
    except Exception as exc:  # noqa: BLE001 - a bad URL, a locked or damaged database: one line
        raise StudioError(f"cannot open the search storage {settings.storage_url}: {str(exc).splitlines()[0]}") from None
    # a resumed search must not replay the random draws of the run before it
    seed = settings.seed + len(study.trials)
    study.set_user_attr("split_rule", split_rule(settings.source))
    study.sampler = sampler(optuna, seed, settings.workers)
    return study


def earlier_rule_note(settings: Settings) -> str | None:
    """A study of the same search made under the earlier rule (the held-out set halved) in the
    same storage: its numbers were measured on other samples, so it is not continued; this search
    starts anew beside it, and says so."""
    optuna = _need("optuna")
    if split_rule(settings.source) != VALIDATION:
        return None
    old = settings.study_name.replace(f"|{VALIDATION}", f"|{HALVES}")
    try:
        names = optuna.get_all_study_names(settings.storage_url)
    except Exception:  # noqa: BLE001 - no storage yet: nothing earlier
        return None
    if old not in names:
        return None
    count = len(optuna.load_study(study_name=old, storage=settings.storage_url).trials)
    return (f"this folder holds an earlier search of this model and data ({count} trials) made when the held-out "
            "set was halved (selection and confirmation halves); its numbers are on other samples, so it is NOT "
            "continued: this search starts anew (trials chosen on a validation split of the training data, the "
            f"front and best confirmed on the whole held-out set). The old study stays in {settings.storage_url}")


def sampler(optuna, seed: int, workers: int = 1):
    """TPE, for one objective and for several (multi-objective TPE, MOTPE). Optuna's own note on
    NSGAIISampler: TPE 'supports several features not supported by NSGAIISampler such as handling
    of dynamic search space and categorical distance', and its budget table puts NSGA-II at
    100-10000 trials. This space is define-by-run (a pass's options exist only when it is chosen)
    and a search on two cores is tens of trials: NSGA-II's first generation would be all random,
    and a child sampled the parameters its parents lacked independently. The quality budget is
    a constraint (trial.set_constraint), which both samplers honour. constant_liar: with several
    workers, running trials count as bad guesses so two workers are not given the same recipe."""
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True, group=True,
                                      constant_liar=workers > 1)


def sampler_name(objectives) -> str:
    return "TPE" if len(objectives) == 1 else "TPE (multi-objective)"


def _prepare(study, settings: Settings) -> list[str]:
    """Warm start (first run only): the shipped recipes that fit the space are the first trials,
    the cheapest (fewest training epochs) first, so candidates land from the first minute.
    Resume: trials a killed run left RUNNING are failed and queued again with their parameters."""
    from optuna.trial import TrialState

    notes = []
    if settings.warm_start and not study.trials:
        queued, near = 0, []
        for recipe in sorted(shipped_recipes(), key=training_epochs):
            params = recipe_params(recipe, settings.passes, settings.max_epochs)
            if params is not None:
                study.enqueue_trial(params, user_attrs={"warm_start": recipe.name}, skip_if_exists=True)
                queued += 1
                near += [(p, recipe.name) for p in neighbours(params, settings.max_epochs)]
        for params, name in near:  # after every shipped recipe: those land first
            study.enqueue_trial(params, user_attrs={"near_shipped": name}, skip_if_exists=True)
        notes.append(f"warm start: {queued} shipped recipes queued first, then {len(near)} of their neighbours "
                     "(one compression knob a notch further)")
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        _requeue(study, trial.number, trial.params)
    if stale:
        notes.append(f"resumed: {len(stale)} candidate(s) a stopped run left unfinished run again")
    return notes


def _requeue(study, number: int, params: dict) -> None:
    from optuna.trial import TrialState

    study._storage.set_trial_user_attr(study._storage.get_trial_id_from_study_id_trial_number(
        study._study_id, number), "interrupted", True)
    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(params)


class _Lock:
    """One search per output folder: a second would run the same trials twice."""

    def __init__(self, out: Path):
        from .fileio import _pid_alive

        self.path = out / "search.lock"
        try:
            pid = int(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and pid != os.getpid() and _pid_alive(pid):
            raise StudioError(f"another search (pid {pid}) is running in {out}; wait for it or cancel it")
        self.path.write_text(str(os.getpid()))

    def release(self):
        try:
            if self.path.read_text().strip() == str(os.getpid()):
                self.path.unlink()
        except OSError:
            pass


class _RayPool:
    def __init__(self, workers: int, address: str | None):
        import logging

        ray = _need("ray")
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            if address:
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
            else:
                # the workers import this very studio (a checkout or the installed one)
                root = str(Path(__file__).resolve().parents[2])
                path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
                ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                         runtime_env={"env_vars": {"PYTHONPATH": path}})
        self.task = ray.remote(num_cpus=1, max_retries=0)(evaluate)

    def submit(self, source, recipe_dict, settings: Settings):
        return self.task.remote(source, recipe_dict, settings.timed_batch, settings.rounds, settings.threads)

    def ready(self, refs: list, timeout: float) -> list:
        if not refs:
            return []
        done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        return done

    def result(self, ref):
        try:
            return self.ray.get(ref, timeout=60)
        except Exception as exc:  # noqa: BLE001 - a worker that died: a failed candidate, in one line
            return {"error": f"the Ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}, {}

    def cancel(self, ref):
        try:
            self.ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001, S110 - already finished
            pass

    def close(self):
        if self.started:
            self.ray.shutdown()


class _Confirmer:
    """The confirmation set's measurements, taken in the driver and never shown to the optimizer
    (why: see held_out_split). The original's quality there once, then a candidate's stored
    model.onnx when it is on the front or a best. Each is kept in the study's user attrs
    (`confirmed:<key>`; a finished trial's own attrs cannot change), so a rerun after a kill
    measures none of them again."""

    PREFIXES = {HALVES: "confirmed:", VALIDATION: "confirmed-held-out:"}  # per rule: never read across rules

    def __init__(self, study, settings: Settings):
        self.study, self.settings = study, settings
        self.PREFIX = self.PREFIXES[split_rule(settings.source)]
        self.done = {k[len(self.PREFIX):]: v for k, v in study.user_attrs.items() if k.startswith(self.PREFIX)}
        self.reference = None  # the original's outputs on the confirmation set (agreement needs them)
        self.measured = 0  # candidates confirmed by this run (a rerun confirms none twice)
        cached = _loaded(settings.source)
        self.model, self.data, self.note = cached[0], cached[3], cached[4]

    @property
    def split(self) -> bool:
        return self.data is not None

    def _outputs(self, proto, cancel_event):
        from .convert import iter_session_all, session

        sess = session(proto)
        x = self.data.shaped(self.data.x_test, self.model.input_shape)
        steps = iter_session_all(sess, x, cancel=cancel_event)
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                return stop.value, [o.name for o in sess.get_outputs()]

    def _quality(self, proto, cancel_event) -> float | None:
        from .evaluate import Measurement, embedding_vocab, quality_from_outputs

        outs, names = self._outputs(proto, cancel_event)
        m = Measurement()
        quality_from_outputs(m, outs, self.data.y_test, self.reference, names, vocab=embedding_vocab(self.model))
        return m.quality

    def _original(self, cancel_event) -> float | None:
        if self.reference is None:
            self.reference, _ = self._outputs(_original_proto(), cancel_event)
        if "original" not in self.done:
            q0 = self._quality(_original_proto(), cancel_event)
            self.done["original"] = {"quality": q0}
            self.study.set_user_attr(self.PREFIX + "original", self.done["original"])
        return self.done["original"]["quality"]

    def measure(self, c: dict, cancel_event=None) -> bool:
        """Confirm candidate c (measured once, ever) and fill in its numbers; False when the
        held-out set was not split (nothing to confirm on)."""
        import onnx

        if not self.split:
            return False
        if c["key"] not in self.done:
            q0 = self._original(cancel_event)
            q = self._quality(onnx.load(str(Path(c["folder"]) / "model.onnx")), cancel_event)
            value = {"quality": q, "quality_drop_points": None if q is None or q0 is None else round((q0 - q) * 100, 4),
                     "samples": len(self.data.x_test)}
            self.done[c["key"]] = value
            self.measured += 1
            self.study.set_user_attr(self.PREFIX + c["key"], value)
        self.apply(c)
        return True

    def apply(self, c: dict) -> dict:
        """c's reported quality: confirmed if it was; unconfirmed (None) if not; the selection
        numbers, flagged unconfirmed, when the held-out set was too small to split."""
        value = self.done.get(c["key"])
        if value is not None:
            c.update(quality=value["quality"], quality_drop_points=value["quality_drop_points"], confirmed=True,
                     confirmed_within_budget=value["quality_drop_points"] is not None
                     and value["quality_drop_points"] <= self.settings.max_drop)
        elif not self.split:
            c.update(quality=c["selection_quality"], quality_drop_points=c["selection_drop_points"], confirmed=False,
                     confirmed_within_budget=None)
        return c


def confirmer(settings: Settings, cancel_event=None):
    """confirm(candidate): a finished search's candidate measured on the confirmation set (once,
    ever: kept in the study) and its `quality` / `quality_drop_points` filled in; for a caller
    that picks among candidates after the search (benchmarks/search.py) and must judge its pick
    on data it did not pick by."""
    done = _Confirmer(_open_study(settings), settings)

    def confirm(c: dict) -> dict:
        done.measure(c, cancel_event) or done.apply(c)
        return c

    return confirm


def _on_front(point: tuple, others) -> bool:
    """No other point (all coordinates minimized) dominates this one."""
    return not any(all(a <= b for a, b in zip(q, point)) and any(a < b for a, b in zip(q, point)) for q in others)


def _attrs(result: dict) -> dict:
    """The numbers kept in Optuna's storage beside the trial (the whole record is in the store)."""
    keys = ("quality", "quality_drop_points", "shipped_bytes", "latency_ms", "latency_ratio", "macs", "x_smaller")
    return {k: result.get(k) for k in keys}


def search(settings: Settings, cancel_event: threading.Event | None = None) -> Generator[Event, None, dict]:
    """Run the search within its budget; yields Events (a candidate as it lands), returns the
    summary (also written to OUT/search.json). A set cancel_event stops it at the next step:
    running candidates are queued again, so the next run of the same search does them."""
    from optuna.trial import TrialState

    cancel_event = cancel_event or threading.Event()
    settings.out.mkdir(parents=True, exist_ok=True)
    lock = _Lock(settings.out)
    store = Store(settings.out)
    started = time.monotonic()
    deadline = started + settings.seconds
    measured = reused = 0
    pool = None
    running: dict = {}  # trial number -> (trial, key, recipe dict, Ray ref or None)
    stopped = "time"
    try:
        older = earlier_rule_note(settings)
        study = _open_study(settings)
        if older:
            yield Event(0.0, older)
        for note in _prepare(study, settings):
            yield Event(0.0, note)
        confirmer = _Confirmer(study, settings)
        yield Event(0.0, confirmer.note["note"])
        earlier, _failed = _collect(study, settings, store, confirmer)
        if earlier:  # on the chart before anything new lands
            yield Event(0.0, f"{len(earlier)} candidate(s) from earlier runs of this search, kept", earlier=earlier)
        # the front so far (selection set): key -> (drop, *objective values); a candidate that
        # lands on it is confirmed at once (a point can leave the front, never join it later)
        points = {c["key"]: (c["selection_drop_points"], *[c[OBJECTIVES[o]] for o in settings.objectives])
                  for c in earlier}

        def counted() -> int:
            return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL,
                                                                           TrialState.PRUNED))
                       if not t.user_attrs.get("interrupted"))

        measured_by: dict[str, int] = {}  # key -> the study's trial that holds the candidate's values
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            measured_by.setdefault(t.user_attrs.get("key"), t.number)

        def budget_left() -> bool:
            nonlocal stopped
            if time.monotonic() >= deadline:
                stopped = "time"
                return False
            if settings.trials is not None and counted() + len(running) >= settings.trials:
                stopped = "trials"
                return False
            return True

        def fraction() -> float:
            by_time = (time.monotonic() - started) / max(settings.seconds, 1e-9)
            by_trials = counted() / settings.trials if settings.trials else 0.0
            return min(0.99, max(by_time, by_trials))

        def finish(trial, key, result, files, was_reused) -> Event:
            nonlocal measured, reused
            if not was_reused:
                store.save(key, result, files)
                measured += 1
            else:
                reused += 1
            trial.set_user_attr("key", key)
            if was_reused and key in measured_by and "error" not in result:
                # proposed again: the same candidate, not a new observation. Told as PRUNED, which
                # TPE counts with the poor trials, so it moves away from what it has measured;
                # told COMPLETE with the same values, each repeat weighed the point once more (a
                # 30-minute run proposed one recipe 782 times, a free worker waiting each time)
                trial.set_user_attr("duplicate_of", measured_by[key])
                study.tell(trial, state=TrialState.PRUNED)
                return Event(fraction(), f"candidate {trial.number}: the recipe of candidate {measured_by[key]} "
                                         "again, not measured again", detail=True)
            if "error" in result:
                trial.set_user_attr("error", result["error"])
                study.tell(trial, state=TrialState.FAIL)
                return Event(fraction(), f"candidate {trial.number}: failed: {result['error']}")
            values = [result.get(OBJECTIVES[o]) for o in settings.objectives]
            for k, v in _attrs(result).items():
                trial.set_user_attr(k, v)
            if any(v is None for v in values):
                trial.set_user_attr("error", "not measured: " + ", ".join(
                    o for o, v in zip(settings.objectives, values) if v is None))
                study.tell(trial, state=TrialState.FAIL)
                return Event(fraction(), f"candidate {trial.number}: {trial.user_attrs['error']}")
            trial.set_constraint("quality_drop", result["quality_drop_points"] - settings.max_drop)  # <= 0: within
            study.tell(trial, values)
            measured_by.setdefault(key, trial.number)
            candidate = _candidate(trial.number, key, result, store, was_reused) | {"reused": was_reused}
            point = (result["quality_drop_points"], *values)
            candidate["pareto"] = _on_front(point, [p for k, p in points.items() if k != key])
            points[key] = point
            candidate["within_budget"] = result["quality_drop_points"] <= settings.max_drop
            if candidate["pareto"]:
                confirmer.measure(candidate, cancel_event)
            else:
                confirmer.apply(candidate)
            word = "reused" if was_reused else f"{result['seconds']:.0f} s"
            return Event(fraction(), f"candidate {trial.number} ({word}): {result['recipe']['name']}: "
                                     f"{_short(candidate)}", candidate)

        def ask():
            trial = study.ask()
            running[trial.number] = (trial, None, None, None)  # from here on a stop queues it again
            recipe = suggest_recipe(trial, settings.passes, settings.max_epochs).to_dict()
            key = candidate_key(settings.source, recipe, settings.timed_batch)
            return trial, key, recipe

        def stored(key, recipe):
            """(result, key) of the candidate on disk; a search without latency also takes the
            same candidate measured with latency (by a search that minimized it)."""
            keys = [key] if settings.timed_batch else [candidate_key(settings.source, recipe, settings.batch), key]
            for k in keys:
                if (result := store.load(k)) is not None:
                    return result, k
            return None, key

        if settings.workers > 1 or settings.ray_address:
            yield Event(0.0, f"starting Ray ({settings.ray_address or f'{settings.workers} local workers'})")
            pool = _RayPool(settings.workers, settings.ray_address)
        while True:
            if cancel_event.is_set():
                raise Cancelled()
            # fill the free workers (a candidate already on disk lands at once)
            while len(running) < settings.workers and budget_left():
                trial, key, recipe = ask()
                cached, key = stored(key, recipe)
                if cached is not None:
                    del running[trial.number]
                    yield finish(trial, key, cached, {}, True)
                    continue
                if pool is None:
                    running[trial.number] = (trial, key, recipe, None)
                    break
                running[trial.number] = (trial, key, recipe, pool.submit(settings.source, recipe, settings))
            if not running:
                break
            if pool is None:  # in-process: one candidate, its progress shown
                number, (trial, key, recipe, _) = next(iter(running.items()))
                steps = evaluate_steps(settings.source, recipe, settings.timed_batch, settings.rounds, settings.threads,
                                       cancel_event)
                try:
                    while True:
                        try:
                            _, message = next(steps)
                        except StopIteration as stop:
                            result, files = stop.value
                            break
                        yield Event(fraction(), f"candidate {number} {_left(deadline)}: {message}", detail=True)
                except Cancelled:
                    raise
                except Exception as exc:  # noqa: BLE001 - a failed candidate, kept with its reason
                    result, files = {"error": failure(exc), "recipe": recipe}, {}
                finally:
                    steps.close()
                del running[number]
                yield finish(trial, key, {**result, "recipe": result.get("recipe", recipe)}, files, False)
                continue
            refs = [entry[3] for entry in running.values()]
            done = pool.ready(refs, timeout=0.5)
            for number, (trial, key, recipe, ref) in list(running.items()):
                if ref in done:
                    del running[number]
                    result, files = pool.result(ref)
                    yield finish(trial, key, {**result, "recipe": result.get("recipe", recipe)}, files, False)
            yield Event(fraction(), f"{len(running)} candidate(s) running on Ray, {counted()} done {_left(deadline)}",
                        detail=True)
    except (Cancelled, KeyboardInterrupt, GeneratorExit):
        stopped = "cancelled"
        raise
    finally:
        # unfinished candidates are queued again, so the next run of this search does them
        for number, (trial, _key, _recipe, ref) in running.items():
            if pool is not None and ref is not None:
                pool.cancel(ref)
            try:
                _requeue(study, number, trial.params)
            except Exception:  # noqa: BLE001, S110 - the next run re-queues what is still RUNNING
                pass
        if pool is not None:
            pool.close()
        lock.release()
    yield Event(0.99, "measuring the Pareto front's latency again, in-process, fixed threads")
    summary = yield from _summarize(study, settings, store, measured, reused, stopped, started, cancel_event,
                                    confirmer)
    return summary


def _left(deadline: float) -> str:
    return f"({max(0, deadline - time.monotonic()):.0f} s left)"


def quality_text(label: str, q: float | None) -> str:
    from .evaluate import PERCENT_LABELS

    if q is None:
        return "-"
    return f"{q:.2%}" if label in PERCENT_LABELS else f"{q:.4f}"


def _short(c: dict) -> str:
    """A candidate in one line: its quality on the selection set, and on the confirmation set
    once it is confirmed (on the front)."""
    lat = f", {c['latency_ms']:.3f} ms" if c.get("latency_ms") else ""
    label = c["quality_label"]
    text = f"{label} {quality_text(label, c['selection_quality'])} ({0.0 - c['selection_drop_points']:+.2f} points)"
    if c.get("confirmed"):
        text += f", confirmed {quality_text(label, c['quality'])} ({0.0 - c['quality_drop_points']:+.2f})"
    return f"{text}, {c['shipped_bytes']:,} bytes ({c['x_smaller']}x smaller){lat}, {c['macs']:,} MACs"


def _original_proto():
    """The original model's ONNX form (the one this process's last candidate exported, if any)."""
    from .pipeline import Stage

    model, _data, stage = next(iter(_LOADED.values()))[:3]
    if stage is None:
        stage = _LOADED[next(iter(_LOADED))][2] = Stage(0, "original", "0 original", model)
    return stage.onnx()


def _candidate(number: int, key: str, result: dict, store: Store, was_reused: bool) -> dict:
    """A candidate as the search reports it. `selection_quality` / `selection_drop_points` are its
    numbers on the selection set (what it was chosen by); `quality` / `quality_drop_points` the
    confirmed ones (the confirmation set), None until it is confirmed (_Confirmer.apply)."""
    keys = ("recipe", "quality_label", "shipped_bytes", "shipped_file",
            "x_smaller", "onnx_bytes", "zip_bytes", "latency_ms", "latency_ratio", "latency_batch", "macs",
            "parameters", "nonzeros", "seconds")
    c = {"trial": number, "key": key, "quality": None, "quality_drop_points": None,
         "selection_quality": result.get("quality"), "selection_drop_points": result.get("quality_drop_points"),
         **{k: result.get(k) for k in keys}}
    c.update(folder=str(store.folder(key)), latency_remeasured=False, pareto=False, confirmed=False,
             confirmed_within_budget=None)
    return c


def pareto_flags(points: list[tuple]) -> list[bool]:
    """For each point (all coordinates minimized), whether no other point dominates it."""
    flags = []
    for i, p in enumerate(points):
        dominated = any(all(a <= b for a, b in zip(q, p)) and any(a < b for a, b in zip(q, p))
                        for j, q in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def _collect(study, settings: Settings, store: Store, confirmer: _Confirmer) -> tuple[list, list]:
    """(candidates, failed) of the whole study, earlier runs too: one entry per candidate (a
    recipe the sampler proposed again is the same candidate, its trials listed), in trial order,
    the Pareto front (on the selection set) flagged, confirmed numbers where there are some."""
    from optuna.trial import TrialState

    candidates, failed = [], []
    trials = study.get_trials(deepcopy=False)
    first = min((t.datetime_start for t in trials if t.datetime_start), default=None)
    by_key: dict = {}
    for trial in sorted(trials, key=lambda t: (t.datetime_complete is None, t.datetime_complete or 0, t.number)):
        key = trial.user_attrs.get("key")
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and key and key in by_key:
            by_key[key]["trials"].append(trial.number)
            by_key[key]["warm_start"] = by_key[key]["warm_start"] or trial.user_attrs.get("warm_start")
        elif trial.state == TrialState.COMPLETE and key and (result := store.load(key)) is not None:
            by_key[key] = _candidate(trial.number, key, result, store, False) | {
                "trials": [trial.number],
                "warm_start": trial.user_attrs.get("warm_start"),  # the shipped recipe it is, if any
                "near_shipped": trial.user_attrs.get("near_shipped"),  # the shipped recipe it is a notch beyond
                "landed_s": round((trial.datetime_complete - first).total_seconds(), 1),  # since the study began
                "landed_at": trial.datetime_complete.isoformat()}
            candidates.append(by_key[key])
        elif trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted"):
            failed.append({"trial": trial.number, "params": trial.params, "error": trial.user_attrs.get("error")})
    candidates.sort(key=lambda c: c["trial"])
    points = [(c["selection_drop_points"], *[c[OBJECTIVES[o]] for o in settings.objectives]) for c in candidates]
    for c, flag in zip(candidates, pareto_flags(points)):
        c["pareto"] = flag
        c["within_budget"] = c["selection_drop_points"] <= settings.max_drop  # as the search saw it
        confirmer.apply(c)
    return candidates, failed


def _summarize(study, settings: Settings, store: Store, measured: int, reused: int, stopped: str, started: float,
               cancel_event, confirmer: _Confirmer) -> Generator[Event, None, dict]:
    candidates, failed = _collect(study, settings, store, confirmer)
    original = {}
    front = [c for c in candidates if c["pareto"]]
    for i, c in enumerate(front):  # confirmed as they landed; a kill between landing and confirming: now
        if c["key"] not in confirmer.done and confirmer.split:
            yield Event(0.99, f"confirming the front on the confirmation set ({i + 1}/{len(front)})")
        confirmer.measure(c, cancel_event)
    if front:
        original = yield from _remeasure(front, settings, cancel_event)
    within = [c for c in candidates if c["within_budget"]]
    rejected: dict = {}
    bests = {}
    for o in settings.objectives:
        bests[o], failed_here = yield from pick_best(within, o, lambda c: confirmer.measure(c, cancel_event),
                                                     confirmer.split)
        rejected.update({c["trial"]: c["quality_drop_points"] for c in failed_here})
    late = [c for c in bests.values() if c is not None and not c["latency_remeasured"]]
    if late:  # a best off the front (its front neighbours failed confirmation): timed like the front
        yield from _remeasure(list({c["key"]: c for c in late}.values()), settings, cancel_event)
    best = bests[settings.objectives[0]]
    if best is not None:
        best = yield from _ship_best(best, settings, store, cancel_event)
    summary = {
        "executor": "ray" if settings.workers > 1 or settings.ray_address else "local",
        "workers": settings.workers, "ray_address": settings.ray_address,
        "study": settings.study_name, "storage": settings.storage_url, "out": str(settings.out),
        "objectives": list(settings.objectives), "max_drop_points": settings.max_drop,
        "sampler": sampler_name(settings.objectives),
        "stopped": stopped, "seconds": round(time.monotonic() - started, 1),
        "measured_this_run": measured, "reused_this_run": reused, "confirmed_this_run": confirmer.measured,
        "original": original,
        "latency": {"remeasured": "the Pareto front (and a best off it), in-process after the search, with the "
                                  "original, in interleaved rounds; other candidates keep the latency measured on their worker"
                                  + ("" if settings.timed_batch else " (none: no objective is latency, so workers "
                                     "do not time candidates; latency_ms is null off the front)"),
                    "on_workers": bool(settings.timed_batch),
                    "batch": settings.batch, "threads": settings.threads, "rounds": 7},
        "held_out": confirmer.note,
        "candidates": candidates, "failed": failed, "best": best,
        "best_by_objective": {o: None if c is None else c["trial"] for o, c in bests.items()},
        "best_rule": f"the smallest {settings.objectives[0]} within the budget on the selection set (ties: the "
                     "smaller drop), kept only if within the budget on the confirmation set too (else the next "
                     "that is); best_by_objective names each objective's",
        "failed_confirmation": [{"trial": t, "quality_drop_points": d} for t, d in rejected.items()],
    }
    from .fileio import atomic_write_text

    atomic_write_text(settings.out / "search.json", json.dumps(summary, indent=2, default=str))
    return summary


BEST_ORDER = {"size": lambda c: (c["shipped_bytes"],), "macs": lambda c: (c["macs"],),
              # the front's latency timed again in-process first, then the rest by their workers' ratio
              "latency": lambda c: (0, c["latency_ms"]) if c["latency_remeasured"]
              else (1, c["latency_ratio"] if c["latency_ratio"] is not None else float("inf"))}


def pick_best(within: list[dict], objective: str, confirm, split: bool = True) -> Generator[Event, None, tuple]:
    """(best, the ones that failed confirmation before it): an objective's best among the
    candidates within the budget on the selection set, in the objective's order (ties: the
    smaller selection drop), kept only if its confirmed drop (confirm(c) measures it once) is
    within the budget too; a selection winner that fails gives way to the next that passes.
    Without a split (too few held-out samples) the selection winner, unconfirmed."""
    failed: list[dict] = []
    for c in sorted(within, key=lambda c: (*BEST_ORDER[objective](c), c["selection_drop_points"])):
        if split and not c["confirmed"]:
            yield Event(0.99, f"confirming the best {objective} candidate so far (trial {c['trial']})")
        confirm(c)
        if not split or c["confirmed_within_budget"]:
            return c, failed
        failed.append(c)
    return None, failed


def _remeasure(front: list[dict], settings: Settings, cancel_event) -> Generator[Event, None, dict]:
    """Latency of the front and the original again, in this process with fixed threads and no
    worker running beside it (a busy worker would otherwise have moved the numbers)."""
    import onnx

    from .evaluate import measure_latency

    model = _loaded(settings.source)[0]
    protos = [_original_proto()] + [onnx.load(str(Path(c["folder"]) / "model.onnx")) for c in front]

    def check():
        if cancel_event.is_set():
            raise Cancelled()

    gen = measure_latency(protos, model.input_shape, (settings.batch,), settings.threads, 7, cancel=check,
                          signature=model.signature)
    while True:
        try:
            _, message = next(gen)
        except StopIteration as stop:
            latencies = stop.value
            break
        yield Event(0.99, f"front ({len(front)} candidates): {message}")
    base = latencies[0][settings.batch]
    for c, lat in zip(front, latencies[1:]):
        c["latency_ms_on_worker"] = c["latency_ms"]
        c["latency_ms"] = round(lat[settings.batch], 5)
        c["latency_x_faster"] = round(base / lat[settings.batch], 3)
        c["latency_remeasured"] = True
    return {"latency_ms": round(base, 5), "batch": settings.batch}


def _ship_best(best: dict, settings: Settings, store: Store, cancel_event) -> Generator[Event, None, dict]:
    """The best candidate as files a user ships: its recipe (OUT/best.yaml, for `studio run`), and
    its model file(s) exported again from the stored file and verified, and its quality measured
    again on the written file (it must be the number the search reported)."""
    import onnx

    from .evaluate import measure, reference_steps
    from .model import ONNX, Model
    from .recipe import Recipe

    yield Event(0.995, "exporting the best candidate and verifying it")
    model, data = _loaded(settings.source)[:2]
    recipe = Recipe.from_dict(best["recipe"], "best")
    recipe.save(settings.out / "best.yaml")
    folder = Path(best["folder"])
    proto = onnx.load(str(folder / "model.onnx"))
    shipped = Model(proto, ONNX, model.input_shape, name=f"{model.name}-best", format="onnx",
                    signature=model.signature)
    exports = []
    formats = ["onnx"] + (["packed"] if best["shipped_file"] == "model.packed" else [])
    for fmt in formats:
        target = settings.out / "best" / f"{model.name}-best.{'onnx' if fmt == 'onnx' else 'packed'}"
        result = _export(shipped, target, fmt, data, cancel_event)
        exports.append(result.as_dict())
    from .training import drain

    reference = drain(reference_steps(model, data, None, _original_proto()))
    again = measure(shipped, data, reference, proto=proto).quality
    return {**best, "recipe_file": str(settings.out / "best.yaml"), "exports": exports,
            # measured on the selection set, as the candidate was: the written file is the one measured
            "selection_quality_of_written_file": again,
            "verified": all(e["verified"] for e in exports) and again is not None
            and best["selection_quality"] is not None and abs(again - best["selection_quality"]) < 1e-9}
