"""The whole job on a ResNet-size ONNX file, in the real window: open, look, select a layer,
INT8 static on random data (quality = agreement with the original), run, pick the stage on the
chart, export it through the export dialog and load the file in onnxruntime.

Each step is timed, and a 5 ms QTimer on the UI thread records the longest gap between its ticks
(how long the window could not repaint): heavy work must stay on workers. Run with -s to see
the table."""

import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

UI_STALL_LIMIT_MS = 1500  # a stall the user would notice as a frozen window; typical gaps are < 100 ms


class StallMeter:
    """Longest gap between ticks of a 5 ms timer on the UI thread (benchmarks/ui_stall.py)."""

    def __init__(self):
        from PySide6.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(self._tick)
        self.last, self.max_gap = None, 0.0

    def _tick(self):
        now = time.perf_counter()
        if self.last is not None:
            self.max_gap = max(self.max_gap, now - self.last)
        self.last = now

    def start(self):
        self.last, self.max_gap = None, 0.0
        self.timer.start()

    def stop(self) -> float:
        self.timer.stop()
        return self.max_gap * 1000


@pytest.fixture(scope="module")
def resnet18_onnx(tmp_path_factory):
    from studio.core.zoo.archs import ARCHS

    factory, shape = ARCHS["resnet18"]
    torch.manual_seed(0)
    module = factory().eval()
    path = tmp_path_factory.mktemp("resnet") / "resnet18.onnx"
    with torch.no_grad():
        torch.onnx.export(module, (torch.randn(*shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    return path


@pytest.mark.slow
def test_resnet18_onnx_int8_whole_job(window, qtbot, tmp_path, resnet18_onnx):
    w = window
    w.jobs.latency_batches = (1,)  # one latency batch keeps the run short on a ResNet
    meter = StallMeter()
    timings: list[tuple[str, float, float]] = []

    def step(name, action, done, timeout=60_000):
        """Do `action`, wait until `done()`; record the time and the longest UI stall."""
        meter.start()
        t = time.perf_counter()
        action()
        try:
            qtbot.waitUntil(done, timeout=timeout)
        except Exception:  # noqa: BLE001 - pytest-qt's TimeoutError: fail with the log
            pytest.fail(f"{name}: not done after {timeout / 1000:.0f} s; running {w.tasks.running()}; log:\n"
                        f"{w.log_panel.text.toPlainText()[-3000:]}\nerror: {w.recipe_panel.error.text()}")
        qtbot.wait(50)  # let the views paint what landed
        timings.append((name, time.perf_counter() - t, meter.stop()))

    # open the file: the graph shows the network
    step("open resnet18.onnx (graph, layout, stats)", lambda: w.open_path(str(resnet18_onnx)),
         lambda: w.session.model is not None and w.graph_view.items and not w.tasks.running())
    model = w.session.model
    assert model.framework == "onnx" and model.input_shape == (1, 3, 224, 224)
    graph = w.session.current.graph
    convs = [n for n in graph.nodes if n.op == "Conv"]
    assert len(convs) == 20  # 17 3x3/7x7 convolutions + 3 downsample 1x1 (BatchNorm folded in)
    assert set(w.graph_view.groups) >= {"group:layer1", "group:layer4"}  # opens with its blocks closed
    assert graph.total_parameters == pytest.approx(11.69e6, rel=0.01)

    # select a layer (a click on its box in the graph, its group opened): the inspector shows it
    layer = next(n.name for n in convs if "layer2" in n.name)
    assert w.graph_view.reveal(layer) and layer in w.graph_view.items
    item = w.graph_view.items[layer]
    w.graph_view.canvas.centerOn(item)

    def click():
        from PySide6.QtCore import Qt

        pos = w.graph_view.canvas.mapFromScene(item.sceneBoundingRect().center())
        qtbot.mouseClick(w.graph_view.canvas.viewport(), Qt.LeftButton, pos=pos)

    step("select a layer (inspector, heatmap)", click,
         lambda: w.session.selected_layers == [layer] and w.inspector.image.image is not None)
    assert layer in w.inspector.title.text()
    assert w.inspector.image.image.ndim == 2

    # the recipe: INT8 static, few calibration samples, random data (quality = agreement)
    box = w.recipe_panel.data_box
    box.setCurrentIndex(box.findData("random"))
    box.activated.emit(box.currentIndex())  # what a pick in the combo box sends
    assert w.session.data_spec == "random"
    w.recipe_panel.add_pass("quantize.int8_static")
    w.recipe_panel.form.set_value("calibration_samples", 16)
    assert w.session.recipe.passes[0].options.get("calibration_samples") == 16

    step("run quantize.int8_static (calibrate, measure, latency)", lambda: w.actions_["run"].trigger(),
         lambda: len(w.session.runs) == 1 and not w.tasks.running(), timeout=180_000)
    run = w.session.runs[0]
    assert [s.name for s in run.stages] == ["original", "quantize.int8_static"]
    int8 = run.stages[1]
    assert int8.measurement.accuracy is None and int8.measurement.agreement is not None
    assert int8.measurement.quality_label == "agreement"
    assert int8.measurement.size_bytes < 0.3 * run.stages[0].measurement.size_bytes
    assert len(w.chart.scatter.points()) == 2 and w.results.model.rowCount() == 2
    assert w.tabs.currentWidget() is w.chart

    # pick the INT8 point on the chart: graph, inspector and compare show that stage
    point = next(p for p in w.chart.scatter.points() if p.data()[1] == 1)
    step("show the INT8 stage (graph of the QDQ model, stats)",
         lambda: w.chart.scatter.sigClicked.emit(w.chart.scatter, [point], None),
         lambda: w.session.current.index == 1 and not w.tasks.running())
    assert w.session.current.model.framework == "onnx"
    shown = [n for n in w.session.current.graph.nodes if n.op == "Conv"]
    assert len(shown) == 20 and all(n.dtype == "int8" for n in shown)  # Q/DQ pairs folded into the layers
    assert "int8" in w.inspector.title.text()

    # export it (as is: it is the INT8 model) through the dialog; the dialog verifies the file
    dialog = w.export_selected()
    dialog.format.setCurrentIndex(dialog.format.findData("onnx"))
    target = tmp_path / "resnet18-int8.onnx"
    dialog.path.setText(str(target))
    step("export ONNX INT8 (write + verify)", dialog.export_button.click, lambda: dialog.result is not None)
    assert dialog.result.verified, dialog.status.text()
    dialog.close()

    # the file runs in onnxruntime and agrees with the FP32 original on random inputs
    t = time.perf_counter()
    sess = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(resnet18_onnx), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((4, 3, 224, 224)).astype(np.float32)
    assert sess.get_inputs()[0].shape == [1, 3, 224, 224]  # the batch stays pinned, as in the original
    out = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(4)])
    expected = np.concatenate([ref.run(None, {"input": x[i:i + 1]})[0] for i in range(4)])
    timings.append(("load + run the exported file in onnxruntime (test thread)", time.perf_counter() - t, 0.0))
    assert out.shape == (4, 1000) and np.isfinite(out).all()
    assert np.corrcoef(out.ravel(), expected.ravel())[0, 1] > 0.9
    ops = {n.op_type for n in onnx.load(str(target)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert target.stat().st_size < 0.3 * resnet18_onnx.stat().st_size

    print("\nResNet-18 (ONNX, 224x224) in the window:")
    print(f"{'step':60s} {'seconds':>8s} {'longest UI stall':>17s}")
    for name, seconds, stall in timings:
        print(f"{name:60s} {seconds:8.2f} {stall:14.0f} ms")
    stalls = {name: stall for name, _, stall in timings}
    assert max(stalls.values()) < UI_STALL_LIMIT_MS, stalls
