import threading

import numpy as np
import pytest

from studio.core import pipeline
from studio.core.errors import Cancelled, StudioError
from studio.core.recipe import Recipe, RecipeStep
from studio.core.training import drain


def state(model):
    return {k: v.detach().clone() for k, v in model.obj.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


RECIPE = Recipe([RecipeStep("prune.magnitude", {"sparsity": 0.5}), RecipeStep("quantize.int8_static", {"calibration_samples": 64})])


def test_run_keeps_every_stage_and_measures_it(demo_mlp, digits_data):
    before = state(demo_mlp)
    run = drain(pipeline.run(demo_mlp, RECIPE, digits_data, latency_batches=(1, 8), latency_rounds=2))
    assert [s.name for s in run.stages] == ["original", "prune.magnitude", "quantize.int8_static"]
    assert same_state(before, state(demo_mlp)), "the original model was changed"
    orig, pruned, int8 = (s.measurement for s in run.stages)
    assert orig.accuracy > 0.93 and orig.agreement == 1.0 and orig.rel_error == 0.0
    assert pruned.nonzeros < 0.6 * orig.nonzeros and pruned.parameters == orig.parameters
    assert pruned.zip_bytes < orig.zip_bytes
    assert int8.size_bytes < 0.4 * orig.size_bytes  # INT8 weights: a quarter of the bytes, plus scales
    assert run.stages[2].model.framework == "onnx"
    for m in (orig, pruned, int8):
        assert set(m.latency_ms) == {1, 8} and all(v > 0 for v in m.latency_ms.values())
        assert m.latency_rounds == {1: 2, 8: 2}  # the demo is far inside the time budget
        assert m.samples == len(digits_data.x_test)


def test_unchanged_steps_are_reused(demo_mlp, digits_data):
    first = drain(pipeline.run(demo_mlp, RECIPE, digits_data, latency_batches=()))
    edited = Recipe([RECIPE.passes[0], RecipeStep("quantize.int8_static", {"calibration_samples": 32})])
    messages = []
    gen = pipeline.run(demo_mlp, edited, digits_data, latency_batches=(), previous=first.stages)
    while True:
        try:
            messages.append(next(gen).message)
        except StopIteration as stop:
            second = stop.value
            break
    assert second.stages[1].model is first.stages[1].model  # pass 1 was not redone
    assert second.stages[1] is not first.stages[1] and second.stages[2].model is not first.stages[2].model
    assert second.stages[1].measurement is not first.stages[1].measurement  # measured by its own run
    assert second.stages[1].measurement.quality == first.stages[1].measurement.quality
    assert any("unchanged, reused" in m for m in messages)


def test_a_later_run_never_changes_an_earlier_runs_numbers(demo_mlp, digits_data):
    """The report once said unstructured pruning was 5x faster: a later run had rewritten the
    latencies of the stages it shared with the first (issue: numbers stay true)."""
    import json

    first = drain(pipeline.run(demo_mlp, RECIPE, digits_data, latency_batches=(1, 8), latency_rounds=3))
    shown = json.dumps(first.as_dict(), sort_keys=True, default=str)
    edited = Recipe([RECIPE.passes[0], RecipeStep("quantize.int8_static", {"calibration_samples": 32})])
    second = drain(pipeline.run(demo_mlp, edited, digits_data, latency_batches=(1, 8), latency_rounds=3,
                                previous=first.stages))
    assert json.dumps(first.as_dict(), sort_keys=True, default=str) == shown
    assert second.stages[0].measurement is not first.stages[0].measurement
    assert all(set(s.measurement.latency_ms) == {1, 8} for s in second.stages)


def test_cancel_raises_and_leaves_the_model_untouched(demo_cnn, digits_data):
    before = state(demo_cnn)
    cancel = threading.Event()
    recipe = Recipe([RecipeStep("prune.magnitude", {"sparsity": 0.9, "fine_tune_epochs": 5})])
    gen = pipeline.run(demo_cnn, recipe, digits_data, cancel_event=cancel)
    with pytest.raises(Cancelled):
        for progress in gen:
            if progress.stage == 1 and "fine-tune" in progress.message:
                cancel.set()
    assert same_state(before, state(demo_cnn))


def test_bad_input_fails_before_work(demo_cnn):
    with pytest.raises(StudioError, match="needs data"):
        drain(pipeline.run(demo_cnn, RECIPE, None))


def test_progress_is_monotonic(demo_mlp, digits_data):
    overall = [p.overall for p in pipeline.run(demo_mlp, RECIPE, digits_data, latency_batches=(1,), latency_rounds=1)]
    assert overall == sorted(overall) and overall[-1] == pytest.approx(1.0)


def test_html_report_holds_the_table_and_the_chart(demo_mlp, digits_data, tmp_path):
    from studio.core.report import write_html

    run = drain(pipeline.run(demo_mlp, RECIPE, digits_data, latency_batches=(1,), latency_rounds=1))
    png = b"\x89PNG\r\n\x1a\n-not-really"
    path = write_html(tmp_path / "r.html", [run], png, model_name="demo-mlp<x>")
    text = path.read_text()
    assert "demo-mlp&lt;x&gt;" in text and "data:image/png;base64," in text
    assert "prune.magnitude" in text and f"{run.stages[1].measurement.accuracy:.2%}" in text
    assert "<script" not in text


def branchy_onnx(path):
    """x [N, 4] -> If(sum(x) > 0): x @ W1 (4x3) else relu(x @ W2 (4x8)) @ W3 (8x3): an If whose
    condition comes from the data, so no pin can choose its branch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = {n: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
         for n, s in (("W1", (4, 3)), ("W2", (4, 8)), ("W3", (8, 3)))}
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    then = helper.make_graph([helper.make_node("MatMul", ["x", "W1"], ["y"])], "then", [], [y])
    other = helper.make_graph([helper.make_node("MatMul", ["x", "W2"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                               helper.make_node("MatMul", ["r", "W3"], ["y"])], "else", [], [y])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["out"], then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "branchy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])],
                              [*w.values(), numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_html_report_says_how_the_macs_of_an_if_graph_are_counted(tmp_path):
    """As the window's tooltip does: the MACs of a graph with If nodes are the pinned inputs'
    branches (Silero-like VAD, sr=16000), or every branch summed when nothing can choose one."""
    from studio.core.data import random_inputs
    from studio.core.io import load
    from studio.core.report import write_html
    from tests.corpus.models import cases, write

    recipe = Recipe([RecipeStep("quantize.fp16", {})])
    write(cases()["vad_state"], "legacy", tmp_path / "vad.onnx")
    vad = load(tmp_path / "vad.onnx")
    vad = vad.with_signature(vad.io.with_overrides(["sr=16000"]))
    run = drain(pipeline.run(vad, recipe, random_inputs(None, count=12, signature=vad.io),
                             latency_batches=(1,), latency_rounds=1))
    text = write_html(tmp_path / "vad.html", [run], model_name="vad").read_text()
    assert "<p class='note'>MACs of the If branches the pinned inputs (sr=16000) take</p>" in text
    assert f"{run.stages[1].measurement.macs:,}" in text

    branchy = load(branchy_onnx(tmp_path / "branchy.onnx"))
    run = drain(pipeline.run(branchy, recipe, random_inputs(branchy.input_shape, count=20),
                             latency_batches=(1,), latency_rounds=1))
    assert run.stages[0].measurement.macs == 4 * 3 + 4 * 8 + 8 * 3  # both branches
    text = write_html(tmp_path / "branchy.html", [run], model_name="branchy").read_text()
    assert ("<p class='note'>MACs sum every branch of the graph&#x27;s If nodes: pin the inputs that choose the "
            "branch (--input NAME=VALUE) to count the one taken</p>") in text


def test_speed_warnings_say_where_paper_savings_do_not_become_time():
    from studio.core.evaluate import Measurement
    from studio.core.pipeline import speed_warnings

    base = Measurement(macs=1000, nonzeros=1000, latency_ms={1: 1.0, 256: 10.0})
    sparse = Measurement(macs=1000, nonzeros=100, latency_ms={1: 1.0, 256: 9.9})
    fewer_macs = Measurement(macs=400, nonzeros=400, latency_ms={1: 1.0, 256: 9.8})
    faster = Measurement(macs=400, nonzeros=400, latency_ms={1: 0.5, 256: 4.0})
    slower = Measurement(macs=1000, nonzeros=1000, latency_ms={1: 3.0, 256: 30.0})
    assert "dense kernels" in speed_warnings(base, sparse)[0]
    assert "2.5x fewer MACs but no measured speed-up" in speed_warnings(base, fewer_macs)[0]
    assert speed_warnings(base, faster) == []
    assert "3.00x slower" in speed_warnings(base, slower)[0]


@pytest.mark.slow
def test_dynamic_int8_on_a_conv_net_is_flagged(demo_cnn, digits_data):
    recipe = Recipe([RecipeStep("quantize.int8_dynamic", {})])
    run = drain(pipeline.run(demo_cnn, recipe, digits_data, latency_batches=(1, 64), latency_rounds=3))
    warnings = " ".join(run.stages[1].warnings)
    assert "ConvInteger" in warnings  # said before it ran
    assert "slower than the stage before" in warnings  # and measured: ConvInteger is slow on CPU


def test_measuring_reports_each_phase_and_batch(demo_cnn):
    """'measuring the original model' sat at 0 % for 30 s on ResNet-18: it now moves per phase and
    per batch of held-out samples."""
    from studio.core.data import random_inputs

    data = random_inputs(demo_cnn.input_shape, count=4000)  # 800 held out: 4 batches of 256
    progress = []
    gen = pipeline.run(demo_cnn, Recipe([]), data, latency_batches=())
    while True:
        try:
            progress.append(next(gen))
        except StopIteration:
            break
    original = [p for p in progress if p.stage == 0]
    fractions = [p.fraction for p in original]
    assert fractions == sorted(fractions) and len(set(fractions)) >= 6
    messages = {p.message for p in original}
    assert any("exporting to ONNX" in m for m in messages) and any("held-out samples" in m for m in messages)


@pytest.mark.slow
def test_fastest_ships_the_fastest_measured_stage_not_the_last(demo_cnn, digits_data):
    """Issue 10: `fastest` shipped an INT8 stage slower than the pruned float stage before it.
    Here the last stage is dynamic INT8 on a conv net (ConvInteger, several times slower than
    float): the pruned float stage is the one shipped, and the reason says so."""
    steps = [RecipeStep("prune.structured", {"ratio": 0.5}), RecipeStep("quantize.int8_dynamic", {})]
    run = drain(pipeline.run(demo_cnn, Recipe(steps, ship="fastest", max_drop=100.0), digits_data,
                             latency_batches=(1, 64), latency_rounds=3))
    shipped, why = pipeline.shipped_stage(run)
    ms = {s.index: s.measurement.latency_ms[64] for s in run.stages}
    assert ms[2] > 1.5 * ms[1]  # measured: ConvInteger is slow
    assert shipped is run.stages[1] and "fastest at batch 64" in why and "faster than the last stage" in why
    # a quality budget no stage meets ships the last stage and says why
    run.recipe = Recipe(steps, ship="fastest", max_drop=0.0)
    losses = [100 * (run.stages[0].measurement.quality - s.measurement.quality) for s in run.stages[1:]]
    assert min(losses) > 0  # half the channels gone, no fine-tune
    assert pipeline.shipped_stage(run) == (run.stages[2], "the last stage: no stage is within 0 points of the original")
    run.recipe = Recipe(steps)  # the default: the last stage
    assert pipeline.shipped_stage(run)[0] is run.stages[2]
    run.recipe = Recipe(steps, ship="smallest", max_drop=100.0)
    assert pipeline.shipped_stage(run)[0] is min(run.stages[1:], key=lambda s: s.measurement.zip_bytes)
