"""A recurrent state whose batch is not axis 0 (Silero VAD: input [batch, 512], state
[2, batch, 128], sr scalar; the LSTM inside an If). The studio batches the audio by 256/64/32, so
the state must be sliced and fed along its own batch axis, and the next state output gathered
along it; the exporter often names no dim at all (silero_vad.onnx has only unnamed dims)."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from studio.core.convert import run_session_all
from studio.core.signature import from_onnx
from tests.corpus.models import VadState

ROOT = Path(__file__).resolve().parents[2]


def vad_file(path: Path) -> Path:
    """VadState exported like silero_vad.onnx: an If node, and every dynamic dim unnamed."""
    torch.manual_seed(0)
    module = torch.jit.script(VadState().eval())
    args = (torch.randn(2, 64), torch.zeros(2, 2, 16), torch.tensor(16000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=["audio", "state", "sr"],
                          output_names=["prob", "stateN"],
                          dynamic_axes={"audio": {0: "b"}, "state": {1: "b"}, "prob": {0: "b"}, "stateN": {1: "b"}})
    proto = onnx.load(str(path))
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.ClearField("dim_param")
    assert any(n.op_type == "If" for n in proto.graph.node)
    onnx.save(proto, str(path))
    return path


def test_state_is_batched_along_its_own_axis(tmp_path):
    path = vad_file(tmp_path / "vad.onnx")
    sig = from_onnx(onnx.load(str(path)))
    assert [s.batch_axis for s in sig.inputs] == [0, 1, 0]
    assert sig.input("state").describe() == "state: float32 [2, batch, 16]"
    assert sig.problems() == ["input 'sr' is a scalar int64 (a setting, not data): give its value with --input sr=VALUE"]
    sig = sig.with_overrides(["sr=16000", "state:2,1,16"])  # a user's batch-1 size keeps the axis free
    assert sig.input("state").shape == (2, None, 16) and not sig.problems()
    x = sig.random(50)
    assert x.arrays["state"].shape == (50, 2, 16)  # samples first, like every input
    prob, state_n = run_session_all(ort.InferenceSession(str(path)), x, batch_size=16)  # 16+16+16+2
    assert prob.shape == (50, 1) and state_n.shape == (50, 2, 16)
    sess = ort.InferenceSession(str(path))
    for i in (0, 37, 49):  # the same numbers as one sample at a time, fed as the model takes it
        one = sess.run(None, {"audio": x.arrays["audio"][i : i + 1], "state": x.arrays["state"][i][:, None],
                              "sr": np.array(16000, np.int64)})
        np.testing.assert_allclose(prob[i], one[0][0], atol=1e-6)
        np.testing.assert_allclose(state_n[i], one[1][:, 0], atol=1e-6)


def studio(*args):
    return subprocess.run([sys.executable, "-m", "studio", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.slow
def test_cli_runs_and_exports_a_state_model(tmp_path):
    """inspect's hint leads to a command that works: int8 calibration, measurement, export and
    verification all feed the state along axis 1."""
    path = vad_file(tmp_path / "vad.onnx")
    r = studio("inspect", str(path))
    assert r.returncode == 0, r.stderr
    assert "note: input 'sr' is a scalar int64 (a setting, not data): give its value with --input sr=VALUE" in r.stdout
    assert "state: float32 [2, batch, 16]" in r.stdout and "note: input 'state'" not in r.stdout
    out = tmp_path / "out"
    r = studio("run", str(path), "--recipe", str(ROOT / "recipes" / "int8.yaml"), "--data", "random",
               "--input", "sr=16000", "--out", str(out), "--rounds", "1", "--batches", "1", "--no-ram", "-q")
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout
    r = studio("export", str(path), "--format", "ort", "--data", "random", "--input", "sr=16000",
               "--out", str(tmp_path / "vad.ort"))
    assert r.returncode == 0, r.stderr
    assert "verified: max abs diff" in r.stdout


def if_model(path: Path) -> Path:
    """Every layer inside an If on the sample rate (as in silero_vad.onnx): a MatMul per branch."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def branch(name):
        w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), f"{name}_w")
        node = helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"], name=f"{name}/MatMul")
        out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)
        return helper.make_graph([node], name, [], [out], [w])

    nodes = [helper.make_node("Constant", [], ["rate"], value=helper.make_tensor("r", TensorProto.INT64, [], [16000])),
             helper.make_node("Equal", ["sr", "rate"], ["is16"]),
             helper.make_node("If", ["is16"], ["y"], name="If_0", then_branch=branch("then"), else_branch=branch("else"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8]),
                                           helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_int8_of_layers_inside_an_if_quantizes_the_pinned_branch(tmp_path):
    """onnxruntime's QDQ quantizer does not enter If branches (silero_vad.onnx: nothing was
    quantized, its pre-processed copy grew from 2.2 to 3.2 MiB). With the input that decides them
    pinned (a scalar setting must be), the graph specialized for it is quantized: the branch
    sr=16000 takes is in INT8 and a warning says the file computes only that branch."""
    import json

    out = tmp_path / "out"
    r = studio("run", str(if_model(tmp_path / "if.onnx")), "--recipe", str(ROOT / "recipes" / "int8.yaml"),
               "--data", "random", "--input", "sr=16000", "--out", str(out), "--rounds", "1", "--batches", "1",
               "--no-ram", "-q")
    assert r.returncode == 0, r.stderr
    base, int8 = json.loads((out / "report.json").read_text())["stages"]
    assert "graph specialized for sr=16000" in int8["summary"]
    assert "the graph was specialized for the pinned inputs (sr=16000)" in " ".join(int8["warnings"])
    assert "no layer was quantized" not in " ".join(int8["warnings"])
    assert int8["size_bytes"] != base["size_bytes"]
