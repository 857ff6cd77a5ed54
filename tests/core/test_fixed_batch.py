"""ONNX files whose batch axis is pinned (torch.onnx.export without dynamic_axes, the common
case): calibration, measurement and latency at other batch sizes must still work."""

import numpy as np
import onnx
import torch

from studio.core import io, zoo
from studio.core.convert import fixed_batch, session
from studio.core.data import digits
from studio.core.pipeline import run
from studio.core.training import drain
from studio.core.recipe import Recipe, RecipeStep


def fixed_batch_file(tmp_path, batch=1):
    m = zoo.load("cnn")
    path = tmp_path / f"cnn-b{batch}.onnx"
    torch.onnx.export(m.obj.eval(), (torch.randn(batch, 1, 8, 8),), str(path), dynamo=False)
    return path


def test_fixed_batch_is_found(tmp_path):
    proto = onnx.load(str(fixed_batch_file(tmp_path, 2)))
    assert fixed_batch(proto) == 2 and fixed_batch(session(proto)) == 2
    from studio.core.convert import to_onnx_proto

    dynamic = to_onnx_proto(zoo.load("cnn"))
    assert fixed_batch(dynamic) is None and fixed_batch(session(dynamic)) is None


def test_int8_run_on_a_batch_1_file(tmp_path):
    model = io.load(str(fixed_batch_file(tmp_path)))
    assert model.framework == "onnx"
    recipe = Recipe([RecipeStep("quantize.int8_static", {"calibration_samples": 10})])
    result = drain(run(model, recipe, digits(), latency_batches=(1, 8), latency_rounds=2))
    int8 = result.stages[1]
    assert int8.measurement.accuracy > 0.9
    assert any(n.op_type == "QuantizeLinear" for n in int8.model.obj.graph.node)
    for stage in result.stages:  # batch 8 timed as 8 calls of the pinned batch 1
        lat = stage.measurement.latency_ms
        assert set(lat) == {1, 8} and lat[8] > lat[1] > 0
    assert np.isfinite([s.measurement.latency_ms[8] for s in result.stages]).all()
