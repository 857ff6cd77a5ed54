import numpy as np
import pytest
from onnx import TensorProto, helper

from studio.core.convert import predict, to_onnx_model
from studio.core.errors import StudioError
from studio.core.model import ONNX, Model
from studio.core.passes.onnx_torch import onnx_to_torch
from tests.core.test_pass_common import resnet_model


def test_resnet_onnx_to_torch_matches():
    onnx_model = to_onnx_model(resnet_model())
    converted = onnx_to_torch(onnx_model)
    assert converted.is_torch and converted.meta["converted_from"] == "onnx"
    x = onnx_model.example_input(4)
    assert np.abs(predict(converted, x) - predict(onnx_model, x)).max() < 1e-4
    # a real torch module: it trains
    assert any(p.requires_grad for p in converted.obj.parameters())


def test_unsupported_op_says_so():
    node = helper.make_node("Hardmax", ["input"], ["output"], axis=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(StudioError, match="cannot convert this ONNX model to torch"):
        onnx_to_torch(Model(proto, ONNX, (1, 4), name="hardmax"))


def test_matmul_by_a_weight_becomes_linear_with_its_bias():
    """x @ W + b (how exporters write a Linear on 3-D input) converts to one nn.Linear whose
    weight and bias are trainable parameters; a weight two products share stays one buffer (two
    Linear copies would drift apart in training) and is reported."""
    import torch
    from torch import nn

    from studio.core.passes.onnx_torch import constant_matmuls

    rng = np.random.default_rng(0)
    w1, b1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((4, 6), (6,), (6, 4)))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["p"]),
             helper.make_node("MatMul", ["r", "w2"], ["q"]), helper.make_node("Mul", ["p", "q"], ["y"])]
    inits = [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.ravel()) for n, a in (("w1", w1), ("b1", b1), ("w2", w2))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = Model(proto, ONNX, (1, 3, 4), name="matmuls")
    converted = onnx_to_torch(model)  # compared with onnxruntime inside
    linears = [m for m in converted.obj.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].bias is not None
    assert torch.allclose(linears[0].weight, torch.from_numpy(w1.T)) and torch.allclose(linears[0].bias, torch.from_numpy(b1))
    assert len(constant_matmuls(converted.obj)) == 2
    trainable = sorted(tuple(p.shape) for p in converted.obj.parameters() if p.requires_grad)
    assert trainable == [(6,), (6, 4)]
    x = model.example_input(5)
    assert np.abs(predict(converted, x) - predict(model, x)).max() < 1e-4


# --- LSTM, GRU and RNN ---------------------------------------------------------------------------

def _recurrent(op, direction="bidirectional", layout=0, outputs=None, states=True,
               linear_before_reset=1, sequence_lens=None, **attrs):
    """A model of one ONNX LSTM/GRU/RNN node (random weights and biases, initial states as
    inputs, `attrs` such as activations added to the node). Its axis 0 is not a batch (it is
    the sequence, or layout=1 which onnxruntime refuses), so the model has no input shape: the
    tests compare outputs themselves."""
    rng = np.random.default_rng(1)
    gates, hidden, size, seq, batch = {"LSTM": 4, "GRU": 3, "RNN": 1}[op], 5, 3, 7, 2
    dirs = 2 if direction == "bidirectional" else 1
    w, r, b = (rng.standard_normal(s).astype(np.float32) * 0.5
               for s in ((dirs, gates * hidden, size), (dirs, gates * hidden, hidden), (dirs, 2 * gates * hidden)))
    inits = [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.ravel()) for n, a in (("W", w), ("R", r), ("B", b))]
    x_shape, h_shape = ([batch, seq, size], [batch, dirs, hidden]) if layout else ([seq, batch, size], [dirs, batch, hidden])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    names = ["x", "W", "R", "B", ""]
    if sequence_lens is not None:
        inits.append(helper.make_tensor("lens", TensorProto.INT32, [batch], sequence_lens))
        names[4] = "lens"
    if states:
        for state in ("h0", "c0") if op == "LSTM" else ("h0",):
            inputs.append(helper.make_tensor_value_info(state, TensorProto.FLOAT, h_shape))
            names.append(state)
    every = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    outputs = outputs or every
    attrs.update(hidden_size=hidden, direction=direction, layout=layout)
    if op == "GRU":
        attrs["linear_before_reset"] = linear_before_reset
    node = helper.make_node(op, names, [o if o in outputs else "" for o in every], name=f"the_{op.lower()}", **attrs)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                    for o in outputs], inits)
    return Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), ONNX, None, name=op)


def _reference(proto, feeds, layout):
    """onnxruntime's outputs; onnx's reference evaluator for layout=1, which onnxruntime refuses,
    or, for an RNN with Relu, which the reference evaluator does not know, onnxruntime running
    the same node with layout=0 on the inputs transposed to sequence first (outputs transposed
    back: Y [seq, dirs, batch, hidden] -> [batch, seq, dirs, hidden], Y_h [dirs, batch, hidden] ->
    [batch, dirs, hidden])."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    from studio.core.convert import session

    (node,) = proto.graph.node
    relu = any(a.name == "activations" and b"Relu" in a.strings for a in node.attribute)
    if not layout:
        return session(proto).run(None, feeds)
    if not relu:
        return ReferenceEvaluator(proto).run(None, feeds)
    twin = onnx.ModelProto()
    twin.CopyFrom(proto)
    next(a for a in twin.graph.node[0].attribute if a.name == "layout").i = 0
    for value in twin.graph.input:
        dims = value.type.tensor_type.shape.dim
        dims[0].dim_value, dims[1].dim_value = dims[1].dim_value, dims[0].dim_value
    out = session(twin).run(None, {k: np.ascontiguousarray(v.swapaxes(0, 1)) for k, v in feeds.items()})
    return [o.transpose(2, 0, 1, 3) if o.ndim == 4 else o.transpose(1, 0, 2) for o in out]


def _torch_outputs(model, feeds):
    import torch

    with torch.no_grad():
        out = model.obj(*(torch.from_numpy(v) for v in feeds.values()))
    return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]


@pytest.mark.parametrize("op,direction,layout", [("LSTM", "bidirectional", 0), ("GRU", "bidirectional", 0),
                                                 ("LSTM", "reverse", 1), ("GRU", "forward", 1)])
def test_lstm_and_gru_convert_to_torch_layers_with_the_onnx_weights(op, direction, layout):
    """ONNX's gate order ([i, o, f, c], [z, r, h]) becomes torch's, both directions, sequence-first
    and batch-first layouts, initial states given: Y [seq, dirs, batch, hidden], Y_h and Y_c as
    onnxruntime computes them, by an nn.LSTM / nn.GRU that trains."""
    import torch


    model = _recurrent(op, direction, layout)
    converted = onnx_to_torch(model)
    layers = [m for m in converted.obj.modules() if isinstance(m, (torch.nn.LSTM, torch.nn.GRU))]
    assert len(layers) == 1 and type(layers[0]).__name__ == op and layers[0].bidirectional == (direction == "bidirectional")
    assert all(p.requires_grad for p in layers[0].parameters())
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in model.obj.graph.input}
    ours, ref = _torch_outputs(converted, feeds), _reference(model.obj, feeds, layout)
    assert [o.shape for o in ours] == [o.shape for o in ref] and len(ref) == (3 if op == "LSTM" else 2)
    assert max(float(np.abs(a - b).max()) for a, b in zip(ours, ref)) < 1e-5


def test_only_the_final_state_as_graph_output():
    """A graph output that is one of a node's several outputs (here Y_h alone, Y and Y_c unused,
    no initial state) is that output, not the node's whole tuple."""

    model = _recurrent("LSTM", "forward", outputs=["Y_h"], states=False)
    converted = onnx_to_torch(model)
    feeds = {"x": np.random.default_rng(0).standard_normal((7, 2, 3)).astype(np.float32)}
    (ours,), (ref,) = _torch_outputs(converted, feeds), _reference(model.obj, feeds, 0)
    assert ours.shape == ref.shape == (1, 2, 5) and np.abs(ours - ref).max() < 1e-5


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("states", [True, False])
@pytest.mark.parametrize("activation", [None, "Tanh", "Relu"])
def test_plain_rnn_converts_to_torch_rnn_with_the_onnx_weights(direction, layout, states, activation):
    """An ONNX RNN node (Tanh by default, or Relu) becomes an nn.RNN with that nonlinearity:
    both directions, both layouts, with and without an initial state, Y and Y_h as onnxruntime
    computes them."""
    import torch

    dirs = 2 if direction == "bidirectional" else 1
    attrs = {} if activation is None else {"activations": [activation] * dirs}
    model = _recurrent("RNN", direction, layout, states=states, **attrs)
    converted = onnx_to_torch(model)
    layers = [m for m in converted.obj.modules() if isinstance(m, torch.nn.RNNBase)]
    assert len(layers) == 1 and type(layers[0]) is torch.nn.RNN and layers[0].bidirectional == (dirs == 2)
    assert layers[0].nonlinearity == (activation or "Tanh").lower()
    assert all(p.requires_grad for p in layers[0].parameters())
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in model.obj.graph.input}
    ours, ref = _torch_outputs(converted, feeds), _reference(model.obj, feeds, layout)
    assert [o.shape for o in ours] == [o.shape for o in ref] and len(ref) == 2
    assert max(float(np.abs(a - b).max()) for a, b in zip(ours, ref)) < 1e-5


@pytest.mark.parametrize("kwargs,reason", [({"op": "GRU", "linear_before_reset": 0}, "linear_before_reset=0"),
                                           ({"op": "LSTM", "sequence_lens": [7, 4]}, "sequence_lens"),
                                           ({"op": "RNN", "sequence_lens": [7, 4]}, "sequence_lens"),
                                           ({"op": "RNN", "activations": ["Tanh", "Relu"]},
                                            "activations .* listed for each direction, the same in both"),
                                           ({"op": "RNN", "activations": ["Sigmoid", "Sigmoid"]}, "Tanh or Relu"),
                                           ({"op": "RNN", "clip": 3.0}, "clip")])
def test_recurrent_forms_torch_lacks_are_refused_with_the_reason(kwargs, reason):

    model = _recurrent(states=False, **kwargs)
    with pytest.raises(StudioError, match=f"{kwargs['op']} \\(opset 20\\), node 'the_.*{reason}") as err:
        onnx_to_torch(model)
    assert "\n" not in str(err.value)


def test_full_length_sequence_lens_is_accepted():
    model = _recurrent("GRU", sequence_lens=[7, 7], states=False)
    feeds = {"x": np.random.default_rng(0).standard_normal((7, 2, 3)).astype(np.float32)}
    ours, ref = _torch_outputs(onnx_to_torch(model), feeds), _reference(model.obj, feeds, 0)
    assert max(float(np.abs(a - b).max()) for a, b in zip(ours, ref)) < 1e-5


def test_corpus_recurrent_models_convert_and_export_back(tmp_path):
    """The corpus LSTM (two layers) and bidirectional GRU, exported by torch: converted, the
    torch copy's ONNX export computes what the original does at another batch size."""
    from studio.core import io
    from studio.core.convert import run_session_all, session, to_onnx_proto
    from tests.corpus.models import cases, write

    for name in ("lstm", "gru_bidir"):
        path = tmp_path / f"{name}.onnx"
        write(cases()[name], "legacy", path)
        model = io.load(path)
        converted = onnx_to_torch(model)
        x = model.example_inputs(5)
        ours, ref = run_session_all(session(to_onnx_proto(converted)), x), run_session_all(session(model.obj), x)
        assert max(float(np.abs(a - b).max()) for a, b in zip(ours, ref)) < 1e-5


def test_torch_rnn_exported_by_the_legacy_exporter_converts_and_exports_back(tmp_path):
    """A two-layer bidirectional Relu nn.RNN, batch first, written by torch's legacy exporter as
    ONNX RNN nodes: it converts to nn.RNN layers with Relu (compared with onnxruntime inside) and
    the torch copy's ONNX export computes what the original does at another batch size."""
    import torch

    from studio.core import io
    from studio.core.convert import run_session_all, session, to_onnx_proto

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.RNN(6, 8, num_layers=2, nonlinearity="relu", batch_first=True, bidirectional=True)
            self.fc = torch.nn.Linear(16, 3)

        def forward(self, x):
            y, h = self.rnn(x)
            return self.fc(y[:, -1]) + h.sum(0)[:, :3]

    torch.manual_seed(0)
    path = tmp_path / "rnn.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(1, 9, 6),), path, dynamo=False, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
    model = io.load(path)
    assert [n.op_type for n in model.obj.graph.node].count("RNN") == 2
    converted = onnx_to_torch(model)
    layers = [m for m in converted.obj.modules() if isinstance(m, torch.nn.RNNBase)]
    assert len(layers) == 2 and all(type(m) is torch.nn.RNN and m.nonlinearity == "relu" for m in layers)
    x = model.example_inputs(5)
    ours, ref = run_session_all(session(to_onnx_proto(converted)), x), run_session_all(session(model.obj), x)
    assert max(float(np.abs(a - b).max()) for a, b in zip(ours, ref)) < 1e-5


def test_shape_with_start_and_end_stays_dynamic_when_exported_back(tmp_path):
    """Shape(x, end=1) (how torch's dynamo exporter takes the batch size for an initial state)
    still follows the batch in the torch copy's ONNX export instead of the export example's."""
    import onnx

    from studio.core import io
    from studio.core.convert import run_session_all, session, to_onnx_proto

    nodes = [helper.make_node("Shape", ["x"], ["n"], end=1), helper.make_node("Concat", ["n", "four"], ["s"], axis=0),
             helper.make_node("Expand", ["zero", "s"], ["z"]), helper.make_node("Add", ["x", "z"], ["y"])]
    inits = [helper.make_tensor("four", TensorProto.INT64, [1], [4]), helper.make_tensor("zero", TensorProto.FLOAT, [], [1.0])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), tmp_path / "shape.onnx")
    model = io.load(tmp_path / "shape.onnx")
    converted = onnx_to_torch(model)
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    (y,) = run_session_all(session(to_onnx_proto(converted)), x)
    assert np.array_equal(y, x + 1)


def _rnn_net(cls):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre, self.rnn = nn.Linear(10, 64), cls(64, 32, batch_first=True, bidirectional=True)
            self.mid, self.fc = nn.Linear(64, 48), nn.Linear(48, 4)

        def forward(self, x):
            y, _ = self.rnn(torch.relu(self.pre(x)))
            return self.fc(torch.relu(self.mid(y[:, -1])))

    torch.manual_seed(0)
    return Net().eval()


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_structured_pruning_keeps_recurrent_layers_whole_and_prunes_the_rest(cls):
    """On an ONNX model with a bidirectional LSTM/GRU/RNN between Linear layers: the recurrent
    layer keeps its size (named in a warning), the layer after it shrinks, and the pruned model
    runs."""
    from torch import nn

    from studio.core.convert import run_session_all, session, to_onnx_proto
    from studio.core.model import TORCH
    from studio.core.passes.base import Context
    from studio.core.passes.registry import create
    from tests.core.test_pass_common import run

    model = to_onnx_model(Model(_rnn_net(getattr(nn, cls)), TORCH, (1, 12, 10), name="rnn"))
    assert cls in {n.op_type for n in model.obj.graph.node}  # the legacy exporter writes the ONNX op
    result = run(create("prune.structured", ratio=0.5), model, Context())
    rnn = next(m for m in result.model.obj.modules() if isinstance(m, getattr(nn, cls)))
    assert rnn.hidden_size == 32 and any("recurrent layers kept whole" in w for w in result.warnings)
    assert result.layers["mid/Gemm"]["out_channels"] < 48
    if cls != "LSTM":  # Torch-Pruning cannot follow channels into a GRU or RNN: the layer before it stays whole
        assert rnn.input_size == 64 and any("feeding a GRU/RNN kept whole (pre/MatMul)" in w for w in result.warnings)
    x = model.example_inputs(3)
    (y,) = run_session_all(session(to_onnx_proto(result.model)), x)
    assert y.shape == (3, 4) and np.isfinite(y).all()


@pytest.mark.parametrize("form", ["dynamo", "legacy"])
def test_embedding_tables_of_onnx_become_trainable(tmp_path, form):
    """An ONNX Gather from a stored table (the corpus recommender's user and item embeddings,
    from both exporters) converts to an embedding layer: its table is a parameter that
    fine-tuning changes, and the converted model still computes what onnxruntime computes."""
    import torch

    from studio.core import io
    from studio.core.passes.onnx_torch import gathers_as_embedding
    from tests.corpus.models import cases, write

    path = tmp_path / f"recommender_{form}.onnx"
    write(cases()["recommender"], form, path)
    model = io.load(path)
    converted = onnx_to_torch(model)  # compared with onnxruntime inside, on ids in range
    tables = sorted(tuple(m.weight.shape) for m in converted.obj.modules() if isinstance(m, torch.nn.Embedding))
    assert tables == [(40, 16), (60, 16)]
    assert gathers_as_embedding(converted.obj) == 0  # nothing left to replace
    ids = {"user": torch.tensor([3, 39, -1]), "item": torch.tensor([0, 59, -60])}  # negative ids count from the end
    ref = converted.obj(ids["user"] % 40, ids["item"] % 60)
    assert torch.allclose(converted.obj(ids["user"], ids["item"]), ref)
    layers = [m for m in converted.obj.modules() if isinstance(m, torch.nn.Embedding)]
    before = [m.weight.detach().clone() for m in layers]
    optimizer = torch.optim.SGD(converted.obj.parameters(), lr=0.5)
    out = converted.obj(torch.randint(0, 40, (64,)), torch.randint(0, 60, (64,)))
    torch.nn.functional.mse_loss(out, torch.rand_like(out)).backward()
    optimizer.step()
    assert all(not torch.equal(m.weight, b) for m, b in zip(layers, before))


def test_weights_in_constant_nodes_convert_like_initializers():
    """Paddle's layout (PP-OCR det/rec/cls): every weight in a Constant node. onnx2torch found no
    Conv weight among the initializers (KeyError 'conv1_weights'), so prune.structured, fine-tuning
    and distillation refused these models."""
    from tests.core.onnx_models import as_constants
    from studio.core.convert import run_session, session

    model = as_constants(to_onnx_model(resnet_model()))
    assert not [i for i in model.obj.graph.initializer if i.data_type == TensorProto.FLOAT]
    converted = onnx_to_torch(model)  # checks its outputs against onnxruntime's itself
    x = np.random.default_rng(0).standard_normal((2, *model.input_shape[1:])).astype(np.float32)
    assert np.allclose(predict(converted, x), run_session(session(model.obj), x), rtol=1e-3, atol=1e-4)


def test_the_refusal_of_a_constant_weight_model_names_the_node_that_stops_the_conversion():
    """PP-OCRv4 rec (weights in Constant nodes): the refusal named the first Conv and its weight
    ('conv2d_10.w_0'), from a diagnosis of the file as loaded, while the conversion itself had got
    past the Convs; it now diagnoses what onnx2torch was given and names the op it lacks."""
    from onnx import numpy_helper

    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Constant", [], ["w"], value=w),
             helper.make_node("Conv", ["input", "w"], ["h"], name="the_conv"),
             helper.make_node("Hardmax", ["h"], ["output"], axis=1, name="the_hardmax")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2, 4, 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(StudioError, match="Hardmax .*the_hardmax"):
        onnx_to_torch(Model(proto, ONNX, (1, 1, 4, 4), name="paddle_like"))
