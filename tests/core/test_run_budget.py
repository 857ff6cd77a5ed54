"""An onnxruntime call that never ends (a Loop with trip count 2^62) is stopped by the time
budget, by a cancel, and in the CLI with one line; a normal run is unaffected."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from studio.core import convert
from studio.core.errors import Cancelled, StudioError


def endless_loop(path):
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 4])],
        initializer=[helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "c", "x"], ["y"], body=body)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[helper.make_tensor("M", TensorProto.INT64, [], [2**62]),
                     helper.make_tensor("c", TensorProto.BOOL, [], [True])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_the_budget_stops_an_endless_run(tmp_path):
    sess = convert.session(str(endless_loop(tmp_path / "loop.onnx")))
    start = time.monotonic()
    with pytest.raises(StudioError, match="over 1 s and was stopped"):
        convert.guarded_run(sess, {"x": np.zeros((1, 4), np.float32)}, budget_s=1.0)
    assert time.monotonic() - start < 5


def test_a_cancel_stops_an_endless_run(tmp_path):
    sess = convert.session(str(endless_loop(tmp_path / "loop.onnx")))
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    start = time.monotonic()
    with pytest.raises(Cancelled):
        convert.run_session_all(sess, np.zeros((3, 4), np.float32), cancel=cancel)
    assert time.monotonic() - start < 5


def test_a_normal_run_returns_its_outputs(tmp_path):
    path = tmp_path / "add.onnx"
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    (out,) = convert.guarded_run(convert.session(str(path)), {"x": x})
    np.testing.assert_array_equal(out, 2 * x)


@pytest.mark.slow
def test_studio_run_on_an_endless_loop_ends_in_one_line(tmp_path):
    path = endless_loop(tmp_path / "loop.onnx")
    result = subprocess.run(
        [sys.executable, "-m", "studio", "run", str(path), "--recipe", "recipes/int8.yaml", "--data", "random",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "STUDIO_RUN_BUDGET": "3", "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("studio: error")]
    assert len(errors) == 1 and "was stopped" in errors[0] and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.rstrip().endswith(errors[0])  # progress lines before it, nothing after
