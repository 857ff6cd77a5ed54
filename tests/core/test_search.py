"""The search: real Optuna on real SQLite, real candidates measured by the pipeline, a real
kill of a running `studio search` and its resumption; Ray in one slow test with two workers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import optuna  # the search extra, installed by make setup

from studio.core import search
from studio.core.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]
# a cheap space: ONNX-native passes, no training (each candidate takes a second or two)
PASSES = ("prune.magnitude", "cluster.kmeans", "quantize.int8_static")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A 64-24-10 MLP trained for a few epochs on digits, as an ONNX file (no torch export per
    candidate: every pass of PASSES works on the ONNX graph itself)."""
    import torch
    from torch import nn

    from studio.core.data import digits
    from studio.core.training import drain, train
    from tests.core.onnx_models import export_module

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    data = digits()
    drain(train(net, data.x_train.reshape(len(data.x_train), 64), data.y_train, epochs=4, lr=5e-3))
    path = tmp_path_factory.mktemp("search-model") / "tiny.onnx"
    onnx.save(export_module(net.eval(), (1, 64)), str(path))
    return path


def settings(model: Path, out: Path, **kw) -> search.Settings:
    kw = {"passes": PASSES, "max_epochs": 0, "seconds": 300, "max_drop": 1.0, **kw}
    return search.Settings(search.Source.of(str(model), "digits"), out, **kw)


def run_search(s: search.Settings) -> dict:
    from studio.core.training import drain

    return drain(search.search(s))


def test_every_sampled_recipe_is_a_valid_recipe_and_shipped_recipes_warm_start():
    """The space is made of the passes' own options: 150 random draws all build recipes a file
    can hold; each shipped recipe in the space comes back out of Optuna exactly."""
    from studio.core.passes import registry

    for pass_id, opts in search.SPACE.items():
        fields = registry.get(pass_id).Config.model_fields
        assert all(o.name in fields for o in opts), pass_id
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(150):
        recipe = search.suggest_recipe(study.ask())
        again = Recipe.from_dict(recipe.to_dict(), "sampled")  # strict: types and ranges
        seen.update(s.id for s in again.passes)
    assert seen == set(search.SPACE)
    shipped = {r.name: r for r in search.shipped_recipes()}
    in_space = {name for name, r in shipped.items() if search.recipe_params(r) is not None}
    assert {"smallest: prune 93% + 4-bit clusters", "fastest: structured 75% + INT8", "INT8 static"} <= in_space
    for name in in_space:
        study.enqueue_trial(search.recipe_params(shipped[name]))
        assert search.suggest_recipe(study.ask()).to_dict()["passes"] == shipped[name].to_dict()["passes"], name
    # a recipe outside the space (an option the search does not vary) is not forced into it
    assert search.recipe_params(Recipe.from_dict({"passes": [{"id": "prune.magnitude", "scope": "per_layer"}]})) is None


def test_pareto_flags():
    points = [(0.0, 100), (1.0, 50), (0.5, 120), (2.0, 50), (0.0, 100)]
    assert search.pareto_flags(points) == [True, True, False, False, True]


def test_missing_optuna_is_one_line(tmp_path, tiny_onnx, monkeypatch, capsys):
    from studio.cli import main

    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed: import fails
    code = main(["search", str(tiny_onnx), "--out", str(tmp_path / "o"), "--trials", "1", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "search needs optuna" in err and "pip install" in err and "[search]" in err


@pytest.mark.slow
def test_killed_search_resumes_without_measuring_again_and_best_replays(tmp_path, tiny_onnx, capsys):
    """Start `studio search`, kill -9 it once two candidates are on disk, run the same search
    again: every earlier candidate is kept with its numbers and files untouched, only new (or
    interrupted) ones are measured; the JSON has the fields; `studio run` replays best.yaml."""
    from studio.cli import main

    out = tmp_path / "out"
    args = ["search", str(tiny_onnx), "--data", "digits", "--objective", "size", "--max-drop", "1.0",
            "--passes", ",".join(PASSES), "--max-epochs", "0", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "studio", *args, "--time", "600", "--trials", "40", "-q"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while len(list(out.glob("candidates/*/result.json"))) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no two candidates within 240 s"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    storage = f"sqlite:///{out / 'search.db'}"
    (name,) = optuna.get_all_study_names(storage)
    before = optuna.load_study(study_name=name, storage=storage)
    done = {t.number: t for t in before.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(done) >= 1
    files = {p: p.stat().st_mtime_ns for p in out.glob("candidates/*/*")}
    target = len(before.trials) + 1  # the trials of the killed run (one maybe unfinished) and one more

    code = main([*args, "--time", "300", "--trials", str(target), "--json", "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    after = optuna.load_study(study_name=name, storage=storage)
    for number, trial in done.items():  # kept, same numbers
        assert after.trials[number].state == optuna.trial.TrialState.COMPLETE
        assert after.trials[number].values == trial.values
    for path, mtime in files.items():  # nothing measured before was written again
        assert path.stat().st_mtime_ns == mtime, path
    interrupted = [t for t in after.trials if t.user_attrs.get("interrupted")]
    assert summary["measured_this_run"] + summary["reused_this_run"] <= 1 + len(interrupted)
    assert summary["measured_this_run"] >= 1
    trials = [n for c in summary["candidates"] for n in c["trials"]]
    assert len(trials) == len(set(trials)) == len(done) + summary["measured_this_run"] + summary["reused_this_run"]

    assert summary["executor"] == "local" and summary["sampler"] == "TPE"
    for c in summary["candidates"]:
        assert {"recipe", "quality", "quality_drop_points", "shipped_bytes", "latency_ms", "macs", "pareto"} <= set(c)
        assert c["shipped_bytes"] > 0 and c["macs"] > 0
        assert (c["latency_ms"] > 0) if c["pareto"] else c["latency_ms"] is None  # size search: the front is timed
        folder = Path(c["folder"])
        assert (folder / "model.onnx").is_file() and (folder / "recipe.yaml").is_file()
        Recipe.load(folder / "recipe.yaml")
    front = [c for c in summary["candidates"] if c["pareto"]]
    assert front and all(c["latency_remeasured"] for c in front)
    assert not any(c["latency_remeasured"] for c in summary["candidates"] if not c["pareto"])
    best = summary["best"]
    assert best is not None and best["verified"] and best["confirmed"]
    assert best["selection_drop_points"] <= 1.0 and best["quality_drop_points"] <= 1.0  # within on both sets
    # the smallest within the budget on the selection set that is within it on the confirmation
    # set too: those before it in size order failed confirmation
    within = sorted((c for c in summary["candidates"] if c["selection_drop_points"] <= 1.0),
                    key=lambda c: (c["shipped_bytes"], c["selection_drop_points"]))
    before = within[:[c["trial"] for c in within].index(best["trial"])]
    assert [f["trial"] for f in summary["failed_confirmation"]] == [c["trial"] for c in before]
    assert all(c["confirmed"] and c["quality_drop_points"] > 1.0 for c in before)
    shipped = Path(best["exports"][-1]["path"])
    assert shipped.is_file() and shipped.stat().st_size == best["shipped_bytes"]
    assert json.loads((out / "search.json").read_text())["best"]["trial"] == best["trial"]

    # the best recipe replays with `studio run` to the same quality and size
    code = main(["run", str(tiny_onnx), "--recipe", best["recipe_file"], "--data", "digits",
                 "--out", str(tmp_path / "replay"), "--batches", "1", "--rounds", "1", "--json", "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    final = report["stages"][-1]
    # `studio run` measures on the whole held-out set, as the confirmation did; it calibrates on
    # the whole training split (the search's candidates left the validation split out), so an
    # INT8 step may land a sample apart
    assert summary["held_out"]["rule"] == search.VALIDATION and summary["held_out"]["confirmation"] == 360
    assert final["quality"] == pytest.approx(best["quality"], abs=2 / 360 + 1e-9)
    exported = {e["format"]: e["size_bytes"] for e in report["exports"]}
    assert exported.get("packed", exported["onnx"]) == best["shipped_bytes"]


@pytest.mark.slow
def test_ray_runs_candidates_in_two_workers(tmp_path, tiny_onnx):
    """A local Ray with two workers: the candidates run in other processes, the JSON says ray."""
    import ray  # the search extra, installed by make setup: a missing Ray fails here, not skips

    s = settings(tiny_onnx, tmp_path / "out", workers=2, trials=2, passes=("quantize.int8_static",), warm_start=False,
                 objectives=("size", "latency"))  # latency an objective: timed on the workers
    summary = run_search(s)
    assert summary["executor"] == "ray" and summary["workers"] == 2
    assert len(summary["candidates"]) == 2 and summary["measured_this_run"] == 2
    workers = {json.loads((Path(c["folder"]) / "result.json").read_text())["worker"] for c in summary["candidates"]}
    assert all(not w.endswith(f":{os.getpid()}") for w in workers)
    assert summary["best"]["verified"]
    assert not ray.is_initialized()  # the studio started it and shut it down
    assert np.isfinite([c["latency_ms"] for c in summary["candidates"]]).all()


def test_candidate_line_reads_cosine_as_a_similarity():
    """A search on a model without class scores: 'cosine 0.9950', not 'cosine 99.50%'."""
    from studio.core.search import _short

    c = {"quality_label": "cosine", "selection_quality": 0.995, "selection_drop_points": 0.5, "shipped_bytes": 1000,
         "x_smaller": 2.0, "macs": 10}
    assert _short(c).startswith("cosine 0.9950 (-0.50 points), 1,000 bytes")
    assert _short(c | {"quality_label": "position agreement"}).startswith("position agreement 99.50%")
    confirmed = c | {"confirmed": True, "quality": 0.99, "quality_drop_points": 1.0}
    assert _short(confirmed).startswith("cosine 0.9950 (-0.50 points), confirmed 0.9900 (-1.00), 1,000 bytes")


def test_epochs_are_a_ladder_capped_by_max_epochs_and_cheap_shipped_recipes_come_first(tmp_path):
    """Training epochs (what a candidate costs) are drawn from a ladder that holds the shipped
    recipes' counts, capped by --max-epochs; the warm start queues the shipped recipes cheapest
    first, so the first candidates land quickly."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    drawn = set()
    for _ in range(120):
        trial = study.ask()
        search.suggest_recipe(trial)
        drawn.update(v for k, v in trial.params.items() if k.endswith("epochs"))
    assert drawn <= set(search.LADDER) and 30 in drawn and 0 in drawn
    assert sum(search.LADDER) / len(search.LADDER) < 10  # was 15 (uniform 0-30)
    capped = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(60):
        trial = capped.ask()
        search.suggest_recipe(trial, max_epochs=4)
        assert all(v <= 4 for k, v in trial.params.items() if k.endswith("fine_tune_epochs"))
        assert "distill.kd.epochs" not in trial.params  # distillation needs at least 5

    storage = f"sqlite:///{tmp_path / 'warm.db'}"
    warm = optuna.create_study(storage=storage, study_name="warm", directions=["minimize", "minimize"])
    fake = search.Settings(search.Source("demo:cnn", ident="demo:cnn|digits"), tmp_path, objectives=("size", "latency"))
    search._prepare(warm, fake)
    trials = warm.get_trials(deepcopy=False)
    queued = [t.user_attrs["warm_start"] for t in trials if "warm_start" in t.user_attrs]
    shipped = {r.name: r for r in search.shipped_recipes()}
    assert len(queued) >= 4 and "smallest: prune 93% + 4-bit clusters" in queued
    costs = [search.training_epochs(shipped[name]) for name in queued]
    assert costs == sorted(costs) and costs[0] == 0 and costs[-1] == 22  # INT8 first, smallest (20 + 2) last
    # then their neighbours, one compression knob a notch further, each inside the space
    near = [t for t in trials if "near_shipped" in t.user_attrs]
    assert [t.number for t in trials] == list(range(len(queued) + len(near)))
    assert all("near_shipped" in t.user_attrs for t in trials[len(queued):])
    smallest = search.recipe_params(shipped["smallest: prune 93% + 4-bit clusters"])
    changed = [{k: v for k, v in t.system_attrs["fixed_params"].items() if smallest.get(k) != v}
               for t in near if t.user_attrs["near_shipped"].startswith("smallest")]
    assert changed == [{"prune.magnitude.sparsity": 0.95}, {"cluster.kmeans.bits": 3}]
    for t in near:
        study = optuna.create_study()
        study.enqueue_trial(t.system_attrs["fixed_params"])
        Recipe.from_dict(search.suggest_recipe(study.ask()).to_dict(), "near")  # a valid recipe
    assert search.neighbours({"cluster.kmeans.bits": 2, "prune.magnitude.sparsity": 0.97}) == []  # at the edges


def test_two_objectives_use_multi_objective_tpe_and_name_each_objectives_best(tmp_path, tiny_onnx):
    """--objective size,latency: Optuna's TPE (multi-objective; the space is define-by-run) on
    SQLite, the quality budget a constraint; every candidate timed on its worker (latency is an
    objective); `best` is the first objective's, `best_by_objective` names each one's. A search
    for size alone in the same folder afterwards takes those candidates as they are."""
    s = settings(tiny_onnx, tmp_path / "out", objectives=("size", "latency"), trials=4, seed=3)
    summary = run_search(s)
    assert summary["sampler"] == "TPE (multi-objective)"
    study = optuna.load_study(study_name=s.study_name, storage=s.storage_url)
    assert len(study.directions) == 2
    assert isinstance(search.sampler(optuna, 0, 2), optuna.samplers.TPESampler)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == len(summary["candidates"]) >= 3
    assert all(len(t.values) == 2 and "quality_drop" in t.constraints for t in done)
    assert all(c["latency_ms"] > 0 for c in summary["candidates"])
    within = [c for c in summary["candidates"] if c["within_budget"]]
    by = summary["best_by_objective"]
    assert set(by) == {"size", "latency"} and summary["best"]["trial"] == by["size"]
    assert by["size"] == min(within, key=lambda c: (c["shipped_bytes"], c["quality_drop_points"]))["trial"]
    fastest = next(c for c in summary["candidates"] if c["trial"] == by["latency"])
    assert fastest["latency_remeasured"] and fastest["pareto"]

    again = run_search(settings(tiny_onnx, tmp_path / "out", objectives=("size",), trials=len(done), seed=3,
                                warm_start=False))
    assert again["measured_this_run"] + again["reused_this_run"] == len(done)
    assert again["reused_this_run"] >= 1  # the same recipes, already measured with latency


def test_a_search_for_size_times_only_its_front(tmp_path, tiny_onnx):
    """No objective is latency: workers do not time candidates (skipped until a candidate is on
    the front); the front is timed once it is known, in-process, with the original."""
    summary = run_search(settings(tiny_onnx, tmp_path / "out", trials=4, seed=5))
    assert summary["latency"]["on_workers"] is False
    front = [c for c in summary["candidates"] if c["pareto"]]
    rest = [c for c in summary["candidates"] if not c["pareto"]]
    assert front and rest
    assert all(c["latency_remeasured"] and c["latency_ms"] > 0 for c in front)
    assert all(c["latency_ms"] is None and not c["latency_remeasured"] for c in rest)
    for c in summary["candidates"]:
        result = json.loads((Path(c["folder"]) / "result.json").read_text())
        assert result["latency_ms"] is None and all(not st.get("latency_ms") for st in result["stages"])
        assert result["seconds_passes"] >= 0 and result["seconds_export"] > 0


def test_a_recipe_proposed_again_is_one_candidate_with_its_trials(tmp_path, tiny_onnx):
    """A space of four recipes (no INT8, or INT8 with one of three calibrations) and six trials:
    the sampler proposes some recipe again; it is read back, not measured again, told to Optuna
    as PRUNED, and the summary lists it once, with every trial that proposed it."""
    summary = run_search(settings(tiny_onnx, tmp_path / "out", passes=("quantize.int8_static",), trials=6,
                                  warm_start=False, seed=7))
    study = optuna.load_study(study_name=settings(tiny_onnx, tmp_path / "out", passes=("quantize.int8_static",)).study_name,
                              storage=f"sqlite:///{tmp_path / 'out' / 'search.db'}")
    done = [t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    again = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    keys = [c["key"] for c in summary["candidates"]]
    assert len(study.trials) == 6 and len(keys) == len(set(keys)) == len(done) <= 4
    assert summary["measured_this_run"] == len(keys) and summary["reused_this_run"] == 6 - len(keys)
    assert sorted(n for c in summary["candidates"] for n in c["trials"]) == list(range(6))
    assert all(c["trial"] == min(c["trials"]) for c in summary["candidates"])
    # a repeat is not a new observation for the sampler: PRUNED (TPE weighs it with the poor
    # trials), naming the trial that holds the values
    assert len(again) == 6 - len(keys) and all(t.user_attrs["duplicate_of"] in done for t in again)


def test_held_out_split_carves_validation_from_training_and_confirms_on_the_whole_held_out_set():
    """Selection data: a validation split carved from the training data (the same every time, by
    label), out of the training part the passes train and calibrate on; confirmation data: the
    whole held-out set. Unlabelled data alike. Training data too small to carve MIN_VALIDATION
    samples from: the held-out set halved (the earlier rule); a held-out set under MIN_SPLIT
    samples: not split, and the note says so."""
    from studio.core.data import Data, digits, random_inputs

    data = digits()
    sel, conf, note = search.held_out_split(data)
    again = search.held_out_split(digits())[0]
    assert np.array_equal(sel.x_test, again.x_test) and np.array_equal(sel.y_test, again.y_test)
    assert note["split"] and note["stratified"] and note["rule"] == search.VALIDATION
    assert conf is data and note["confirmation"] == len(conf.x_test) == 360  # the whole held-out set
    assert note["selection"] == len(sel.x_test) == 360 and len(sel.x_train) + len(sel.x_test) == len(data.x_train)

    def rows(x):
        return {r.tobytes() for r in x.reshape(len(x), -1)}

    assert rows(sel.x_test) | rows(sel.x_train) == rows(data.x_train)
    assert not rows(sel.x_test) & rows(sel.x_train)  # no validation sample is trained or calibrated on
    assert not rows(sel.x_test) & rows(data.x_test) and not rows(sel.x_train) & rows(data.x_test)
    counts = np.bincount(data.y_train) * search.VALIDATION_FRACTION
    assert np.abs(np.bincount(sel.y_test) - counts).max() <= 1  # by label

    random = random_inputs((1, 64))
    sel, conf, note = search.held_out_split(random)
    assert note["split"] and not note["stratified"] and sel.y_test is None and conf is random

    rng = np.random.default_rng(0)
    small = Data("small", rng.standard_normal((300, 64)).astype(np.float32),
                 rng.standard_normal((120, 64)).astype(np.float32), rng.integers(0, 10, 300), rng.integers(0, 10, 120))
    sel, conf, note = search.held_out_split(small)  # 300 training samples: 75 would be carved, too few
    assert note["rule"] == search.HALVES and note["split"] and "halved" in note["note"]
    assert sel.x_train is small.x_train and conf.x_train is small.x_train  # the passes' part untouched
    assert len(sel.x_test) + len(conf.x_test) == 120

    tiny = random_inputs((1, 64), count=200)  # 160 training, 40 held out
    sel, conf, note = search.held_out_split(tiny)
    assert sel is tiny and conf is None and not note["split"] and "not split" in note["note"]


def test_unlabelled_search_confirms_agreement_and_a_tiny_held_out_set_says_unconfirmed(tmp_path, tiny_onnx):
    """Random inputs (no labels): the front is confirmed by agreement with the original on the
    confirmation set. A .npz of 150 samples (120 training, 30 held out): no split; every candidate's quality
    is its selection number, marked unconfirmed, and the result says why."""

    s = settings(tiny_onnx, tmp_path / "random", passes=("quantize.int8_static",), trials=2, warm_start=False)
    s = search.Settings(search.Source.of(str(tiny_onnx), "random", input_shape=(1, 64)), s.out, **{
        k: getattr(s, k) for k in ("passes", "max_epochs", "seconds", "max_drop", "trials", "warm_start")})
    summary = run_search(s)
    assert summary["held_out"]["split"] and not summary["held_out"]["stratified"]
    best = summary["best"]
    assert best["quality_label"] == "agreement" and best["confirmed"] and 0 < best["quality"] <= 1
    assert all(c["confirmed"] for c in summary["candidates"] if c["pareto"])

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "small.npz", x=rng.standard_normal((150, 64)).astype(np.float32), y=rng.integers(0, 10, 150))
    small = search.Settings(search.Source.of(str(tiny_onnx), str(tmp_path / "small.npz")), tmp_path / "small",
                            passes=("quantize.int8_static",), max_epochs=0, trials=2, warm_start=False, max_drop=100)
    summary = run_search(small)
    held = summary["held_out"]
    assert not held["split"] and held["held_out"] == 30 and "not split" in held["note"]
    assert summary["confirmed_this_run"] == 0
    for c in summary["candidates"]:
        assert not c["confirmed"] and c["quality"] == c["selection_quality"]
    from studio.cli import search_table

    assert "NOT CONFIRMED" in search_table(summary)


def test_best_is_the_selection_winner_that_passes_confirmation():
    """Chosen in the objective's order on the selection set; a winner over the budget on the
    confirmation set gives way to the next that is within it; each is confirmed once, in order,
    and no further. Without a split, the selection winner as it is."""
    from studio.core.training import drain

    confirmed_drop = {1: 2.5, 2: 0.9, 3: 0.0}  # trial -> its drop on the confirmation set
    within = [{"trial": t, "shipped_bytes": size, "selection_drop_points": 0.2, "confirmed": False,
               "confirmed_within_budget": None} for t, size in ((3, 900), (1, 500), (2, 700))]
    asked = []

    def confirm(c):
        asked.append(c["trial"])
        c.update(confirmed=True, quality_drop_points=confirmed_drop[c["trial"]],
                 confirmed_within_budget=confirmed_drop[c["trial"]] <= 1.0)

    best, failed = drain(search.pick_best(within, "size", confirm))
    assert best["trial"] == 2 and [c["trial"] for c in failed] == [1] and asked == [1, 2]
    assert drain(search.pick_best([], "size", confirm)) == (None, [])
    unsplit = [dict(c, confirmed=False, confirmed_within_budget=None) for c in within]
    best, failed = drain(search.pick_best(unsplit, "size", lambda c: None, split=False))
    assert best["trial"] == 1 and failed == []


def test_a_study_made_when_the_held_out_set_was_halved_is_not_continued(tmp_path, tiny_onnx):
    """A search folder from before the validation split: its study (the held-out set halved) is
    left as it is, the search says so and starts a study of its own, under the new rule."""
    s = settings(tiny_onnx, tmp_path / "out", passes=("quantize.int8_static",), trials=1, warm_start=False)
    s.out.mkdir(parents=True)
    old_name = s.study_name.replace(search.VALIDATION, search.HALVES)
    assert old_name != s.study_name
    old = optuna.create_study(study_name=old_name, storage=s.storage_url, directions=["minimize"])
    trial = old.ask()
    old.tell(trial, 1234.0)
    old.set_user_attr("confirmed:abc", {"quality": 0.5, "quality_drop_points": 40.0})

    gen, messages = search.search(s), []
    while True:
        try:
            messages.append(next(gen).message)
        except StopIteration as stop:
            summary = stop.value
            break
    assert any("NOT continued" in m and "1 trials" in m for m in messages), messages
    assert summary["study"] == s.study_name and f"|{search.VALIDATION}|" in s.study_name
    assert [c["trial"] for c in summary["candidates"]] == [0]  # its own trial 0, not the old study's
    assert sorted(optuna.get_all_study_names(s.storage_url)) == sorted([old_name, s.study_name])
    again = optuna.load_study(study_name=old_name, storage=s.storage_url)
    assert [t.values for t in again.trials] == [[1234.0]]  # the old study untouched
    new = optuna.load_study(study_name=s.study_name, storage=s.storage_url).user_attrs
    assert new["split_rule"] == search.VALIDATION and not any(k.startswith("confirmed:") for k in new)
    assert summary["held_out"]["rule"] == search.VALIDATION
