"""The window's model keeps its big initializers in the user's file (io.file_tensors): the graph
and the statistics read them from there, identical to the loaded model's; Model.obj reads them
into the proto when a job asks; a file changed since it was opened is refused."""

import os
import threading

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from studio.core import io
from studio.core.errors import Cancelled, LoadError
from studio.core.graph import build_graph
from studio.core.stats import layer_stats, parameter_count, weight_matrix


def model_file(folder, external=False):
    """Gather (embedding with zeros) -> MatMul -> MatMul, and unused initializers of other types
    (float16, int8, int64, bool, double, bfloat16, int4) over 1 KB each; `external`: all of them
    in a sidecar."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((500, 32)).astype(np.float32)
    emb[::3] = 0.0
    w1 = rng.standard_normal((32, 48)).astype(np.float32)
    w1[:, ::2] = -0.0
    w2 = rng.standard_normal((48, 16)).astype(np.float32)
    inits = [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(rng.standard_normal((40, 40)).astype(np.float16), "half"),
             numpy_helper.from_array(rng.integers(-128, 127, (50, 50)).astype(np.int8), "int8"),
             numpy_helper.from_array(rng.integers(0, 1 << 40, (300,)).astype(np.int64), "int64"),
             numpy_helper.from_array(rng.integers(0, 2, (40, 40)).astype(bool), "flags"),
             numpy_helper.from_array(rng.standard_normal((300,)), "double"),
             helper.make_tensor("bf16", TensorProto.BFLOAT16, [40, 40],
                                rng.standard_normal(1600).astype(ml_dtypes.bfloat16).view(np.uint16).tobytes(), raw=True),
             helper.make_tensor("int4", TensorProto.INT4, [3001],
                                rng.integers(0, 256, 1501).astype(np.uint8).tobytes(), raw=True)]
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w1"], ["h"]),
             helper.make_node("MatMul", ["h", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])], inits)
    path = folder / "lazy.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path),
                    save_as_external_data=external, location="lazy.data", size_threshold=1024)
    return path


@pytest.mark.parametrize("external", [False, True], ids=["in the file", "in a sidecar"])
def test_big_tensors_stay_in_the_file_until_a_job_asks(tmp_path, external):
    path = model_file(tmp_path, external)
    full = onnx.load_model(str(path))
    model = io.load(path, isolate=True)
    lazy = model.lazy
    names = {t.name for t in full.graph.initializer}
    assert lazy is not None and {t.name for t in model.light.graph.initializer} == names
    assert {e[2] for e in lazy.entries.values()} == names  # all over 1 KB
    assert not any(t.HasField("raw_data") for t in model.light.graph.initializer)
    for t in full.graph.initializer:
        light = next(x for x in model.light.graph.initializer if x.name == t.name)
        got, want = lazy.array(light), numpy_helper.to_array(t)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes(), t.name
        zeros = lazy.zeros(light)
        assert zeros is None or zeros == want.size - np.count_nonzero(want)
    # the graph and the statistics from the file equal those of the model loaded whole
    eager = io.load(path)
    assert eager.lazy is None
    for a, b in zip(build_graph(model).nodes, build_graph(eager).nodes):
        assert (a.name, a.parameters, a.sparsity, a.macs, a.dtype) == (b.name, b.parameters, b.sparsity, b.macs, b.dtype)
    gather = next(n for n in build_graph(model).nodes if n.op == "Gather")
    assert gather.sparsity == pytest.approx(167 / 500)
    for a, b in zip(layer_stats(model), layer_stats(eager)):
        assert (a.tensor, a.nonzeros, a.min, a.max, a.mean, a.std) == (b.tensor, b.nonzeros, b.min, b.max, b.mean, b.std)
        assert (a.hist_counts == b.hist_counts).all()
    assert (weight_matrix(model, "w1") == weight_matrix(eager, "w1")).all()
    assert model.lazy is lazy  # nothing above read them into the proto
    # a copy of the signature keeps them in the file; obj reads them in, once
    other = model.with_signature(model.signature)
    assert other.lazy is lazy and other.light is model.light
    assert parameter_count(model) == parameter_count(eager)  # (asks obj)
    assert model.lazy is None and model.obj == full
    assert model.obj == eager.obj
    assert other.obj is model.obj and other.obj == full
    assert model.copy().obj == full


@pytest.mark.parametrize("external", [False, True], ids=["in the file", "in a sidecar"])
def test_a_copy_reads_its_own_tensors_from_the_file(tmp_path, external):
    """Model.copy (a job's copy) of a model whose tensors are in the file copies the light proto
    and reads the file into its own proto on its first access; the original stays as it was."""
    path = model_file(tmp_path, external)
    full = onnx.load_model(str(path))
    model = io.load(path, isolate=True)
    lazy, light = model.lazy, model.light
    before = light.SerializeToString()
    copy = model.copy()
    assert copy.lazy is lazy and copy.light is not light  # nothing read yet, in either
    assert not any(t.HasField("raw_data") for t in copy.light.graph.initializer)
    assert copy.obj == full and copy.lazy is None
    assert model.lazy is lazy and model.light is light and light.SerializeToString() == before
    # the copy changed (as a pass changes it): the original, its file and its later copies unaffected
    copy.obj.graph.initializer[0].raw_data = b"\0" * len(copy.obj.graph.initializer[0].raw_data)
    copy.obj.graph.node.pop()
    assert copy.obj != full and light.SerializeToString() == before
    second = model.copy()
    assert model.lazy is lazy and second.obj == full
    assert model.obj == full and model.lazy is None  # the original reads its own in
    assert model.copy().obj == full and model.copy().lazy is None  # a whole model: a whole copy


def test_a_file_changed_after_the_open_is_refused(tmp_path):
    """(its sidecar too; a sidecar onnx's reader refuses, a link, is refused at the open)"""
    path = model_file(tmp_path)
    model = io.load(path, isolate=True)
    emb = next(t for t in model.light.graph.initializer if t.name == "emb")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        model.lazy.array(emb, cancel)
    copy = model.with_signature(model.signature)
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, another time
    os.utime(path, ns=(0, 0))
    with pytest.raises(LoadError, match=r"^lazy.onnx: the file changed since it was opened; open it again$"):
        model.lazy.array(emb)
    with pytest.raises(LoadError, match="changed since it was opened"):
        build_graph(model)
    with pytest.raises(LoadError, match="changed since it was opened"):
        copy.obj  # noqa: B018 - the read into the proto
    path.unlink()
    with pytest.raises(LoadError, match=r"^lazy.onnx: cannot read it"):
        model.obj  # noqa: B018
    (tmp_path / "side").mkdir()
    side = model_file(tmp_path / "side", external=True)
    model = io.load(side, isolate=True)
    emb = next(t for t in model.light.graph.initializer if t.name == "emb")
    data = side.with_name("lazy.data")
    data.write_bytes(data.read_bytes())  # the same bytes, another time
    os.utime(data, ns=(0, 0))
    with pytest.raises(LoadError, match=r"^lazy.onnx: its external data 'lazy.data' changed since it was opened"):
        model.lazy.array(emb)
    data.rename(side.with_name("real.data"))
    data.symlink_to("real.data")
    with pytest.raises(LoadError, match=r"^lazy.onnx: cannot read its external data \("):
        io.load(side)
    with pytest.raises(LoadError, match=r"^lazy.onnx: cannot read its external data \("):
        io.load(side, isolate=True)


def test_a_big_proto_gets_its_session_from_a_file_sized_without_serializing(tmp_path):
    """convert.session sizes the proto by its tensors' dims (upb's ByteSize serializes it all)."""
    from studio.core.convert import SESSION_FROM_FILE, session, weight_bytes

    w = np.full((17 << 20,), 0.5, np.float32)  # 68 MB: over SESSION_FROM_FILE, from a file
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [17 << 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [17 << 20])],
                              [numpy_helper.from_array(w, "w"),
                               helper.make_tensor("b", TensorProto.INT4, [3], b"\x12\x03", raw=True)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert weight_bytes(proto) == w.nbytes + 3 > SESSION_FROM_FILE
    assert abs(weight_bytes(proto) - proto.ByteSize()) < 1024
    x = np.arange(17 << 20, dtype=np.float32)
    assert (session(proto).run(None, {"x": x})[0] == x + 0.5).all()


def _packed_model(folder, external: bool, short: bool = False):
    """Identity over a sub-byte initializer of each packed type (int4, uint4, float4, int2, uint2,
    float6: 4, 2 or 6 bits a value), each over 1 KB; `short`: the last one a byte shorter than its
    dims need."""
    rng = np.random.default_rng(1)
    kinds = [(TensorProto.INT4, 4), (TensorProto.UINT4, 4), (TensorProto.FLOAT4E2M1, 4),
             (TensorProto.INT2, 2), (TensorProto.UINT2, 2), (TensorProto.FLOAT6E2M3, 6)]
    count = 3001  # odd: the last byte is half used
    inits = []
    for k, (dtype, bits) in enumerate(kinds):
        packed = -(-count * bits // 8) - (short and k == len(kinds) - 1)
        t = TensorProto(name=f"t{k}", data_type=dtype, dims=[count])  # (make_tensor refuses a short one)
        t.raw_data = rng.integers(0, 256, packed).astype(np.uint8).tobytes()
        inits.append(t)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    path = folder / "packed.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)]), str(path),
                    save_as_external_data=external, location="packed.data", size_threshold=1024)
    return path


@pytest.mark.parametrize("external", [False, True], ids=["in the file", "in a sidecar"])
@pytest.mark.parametrize("isolate", [False, True], ids=["in-process", "child parse"])
def test_sub_byte_tensors_are_counted_packed(tmp_path, external, isolate):
    """int4/int2/float6 values are stored packed (ceil(count * bits / 8) bytes): such a file opens,
    its tensors equal onnx's own reading, and one a byte short is refused by name. Before, a sidecar
    tensor was counted at a byte a value and refused, and 2- and 6-bit ones were not checked."""
    path = _packed_model(tmp_path, external)
    model = io.load(path, isolate=isolate)
    full = onnx.load_model(str(path))
    lazy = model.lazy
    light = {t.name: t for t in model.light.graph.initializer}
    in_file = {e[2] for e in lazy.entries.values()} if lazy is not None else set()
    for t in full.graph.initializer:
        got = lazy.array(light[t.name]) if t.name in in_file else numpy_helper.to_array(light[t.name])
        assert got.tobytes() == numpy_helper.to_array(t).tobytes(), t.name
    short = _packed_model(tmp_path, external, short=True)
    with pytest.raises(LoadError, match="tensor 't5' claims"):
        io.load(short, isolate=isolate)


@pytest.mark.parametrize("external", [False, True], ids=["in the file", "in a sidecar"])
def test_a_graph_built_while_a_job_fills_the_model_counts_from_the_file(tmp_path, external):
    """The window builds the graph from the light proto while a job's first access to the model
    fills the same message from the file. A tensor filled meanwhile is still counted from the
    file, slice by slice (copying 94 MB out of the message held the GIL ~50-70 ms in BERT-base's
    open), with the same zeros as the model loaded whole."""
    from studio.core.graph.from_onnx import graph_from_onnx

    path = model_file(tmp_path, external)
    model = io.load(path, isolate=True)
    lazy = model.lazy  # what build_graph took before the fill
    light = model.light
    model.obj  # the job's fill: the same message now holds every tensor's bytes  # noqa: B018
    assert model.lazy is None and not any(lazy.pending(t) for t in light.graph.initializer)
    filled = [t for t in light.graph.initializer if lazy.in_file(t)]
    assert {t.name for t in filled} == {e[2] for e in lazy.entries.values()}
    for t in filled:
        zeros = lazy.zeros(t)
        want = numpy_helper.to_array(t)
        assert zeros is None or zeros == want.size - np.count_nonzero(want), t.name
    during = graph_from_onnx(light, model.input_shape, None, lazy)
    whole = build_graph(io.load(path))
    assert [(n.name, n.parameters, n.sparsity) for n in during.nodes] == [(n.name, n.parameters, n.sparsity) for n in whole.nodes]


@pytest.mark.parametrize("external", [False, True], ids=["in the file", "in a sidecar"])
def test_a_model_written_from_the_file_is_the_model_filled_and_written(tmp_path, external):
    """write_model takes the tensors still in the user's file from there (light_onnx): the bytes
    it writes are those it writes once the proto is filled, which are onnx.save_model's; the
    parameters counted from that file and a session on it are the whole model's. The proto is not
    filled on the way (each fill copied a tensor into the message with the GIL held)."""
    from studio.core.convert import light_onnx, session, write_model
    from studio.core.stats import count_parameters

    path = model_file(tmp_path, external)
    model = io.load(path, isolate=True)
    proto, tensors = light_onnx(model)
    assert proto is model.light and tensors is model.lazy
    located: dict = {}
    write_model(proto, tmp_path / "light.onnx", located, tensors)
    assert model.lazy is tensors and all(tensors.pending(t) for t in proto.graph.initializer)
    assert len(located) == len(proto.graph.initializer)  # every one from the file, counted from there
    counted = count_parameters(proto, (tmp_path / "light.onnx", located))
    whole = io.load(path).obj
    write_model(whole, tmp_path / "whole.onnx")
    assert (tmp_path / "light.onnx").read_bytes() == (tmp_path / "whole.onnx").read_bytes()
    assert (tmp_path / "light.onnx").read_bytes() == whole.SerializeToString()
    assert counted == count_parameters(whole)
    ids = np.arange(8, dtype=np.int64).reshape(1, 8) * 7
    got = session(proto, tensors=tensors).run(None, {"ids": ids})[0]
    want = session(whole).run(None, {"ids": ids})[0]
    np.testing.assert_array_equal(got, want)
    # filled meanwhile (another thread's Model.obj): written from the message, the same bytes
    model.obj  # noqa: B018
    write_model(proto, tmp_path / "filled.onnx", tensors=tensors)
    assert (tmp_path / "filled.onnx").read_bytes() == whole.SerializeToString()


def test_a_tensor_a_pass_replaced_is_not_taken_from_the_file(tmp_path):
    """A copy whose tensor of the same name, type and dims holds values of its own (float_data:
    no raw bytes, as a pending tensor) is written with those values, not the file's."""
    from studio.core.convert import write_model

    path = model_file(tmp_path)
    model = io.load(path, isolate=True)
    copy = model.copy()
    w1 = next(t for t in copy.light.graph.initializer if t.name == "w1")
    assert copy.lazy.pending(w1)
    w1.float_data.extend([1.5] * (32 * 48))
    assert not copy.lazy.pending(w1)
    write_model(copy.light, tmp_path / "copy.onnx", tensors=copy.lazy)
    back = onnx.load_model(str(tmp_path / "copy.onnx"))
    assert np.all(numpy_helper.to_array(next(t for t in back.graph.initializer if t.name == "w1")) == 1.5)
    emb = next(t for t in back.graph.initializer if t.name == "emb")
    assert numpy_helper.to_array(emb).tobytes() == numpy_helper.to_array(
        next(t for t in io.load(path).obj.graph.initializer if t.name == "emb")).tobytes()


def test_a_run_on_an_opened_file_leaves_its_tensors_there(tmp_path):
    """An INT8 run on a model the window opened measures the original and quantizes it from the
    user's file: the model's proto is never filled (BERT-base: each 94 MB copy into the message
    froze the window ~50 ms, and the window then held the whole model), and every number equals
    that of the same run on the model loaded whole."""
    from studio.core.data import open_data
    from studio.core.pipeline import run
    from studio.core.recipe import Recipe
    from studio.core.training import drain

    path = model_file(tmp_path)
    recipe = Recipe.from_dict({"passes": [{"id": "quantize.int8_static", "calibration_samples": 32,
                                           "max_tries": 1, "keep_slow_float": False}]})
    results = []
    for isolate in (True, False):
        model = io.load(path, isolate=isolate)
        lazy = model.lazy
        data = open_data("random", model.input_shape, model.signature)
        done = drain(run(model, recipe, data, latency_batches=(1,), latency_rounds=3))
        if isolate:
            assert lazy is not None and model.lazy is lazy
            assert all(lazy.pending(t) for t in model.light.graph.initializer)
        results.append([(m.size_bytes, m.zip_bytes, m.parameters, m.nonzeros, m.quality, m.ram_bytes is None)
                        for m in (s.measurement for s in done.stages)])
        assert len(done.stages) == 2 and "INT8" in done.stages[1].summary
    assert results[0] == results[1]



def test_a_session_maps_the_weights_from_the_file_it_compares(tmp_path, monkeypatch):
    """mapped_session: a session on the file write_model wrote, whose tensors onnxruntime maps
    from that file (a small model beside it names them external data in it), gives the outputs
    of a session on the file itself, and leaves only that file behind; from an opened file's
    light proto too (its tensors written from the user's file)."""
    from studio.core import convert
    from studio.core.convert import light_onnx, located_ranges, mapped_session, session, write_model

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((2000, 32)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.standard_normal((32, 600)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((600,)).astype(np.float32), "b")]
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 600])], inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "user.onnx"))
    monkeypatch.setattr(convert, "WRITE_WHOLE_UNDER", 0)  # the written-in-parts path of a big model
    ids = rng.integers(0, 2000, (3, 8)).astype(np.int64)
    want = session(tmp_path / "user.onnx").run(None, {"ids": ids})[0]
    for isolate in (False, True):
        model = io.load(tmp_path / "user.onnx", isolate=isolate)
        proto, tensors = light_onnx(model)
        folder = tmp_path / f"out-{isolate}"
        folder.mkdir()
        located: dict = {}
        write_model(proto, folder / "m.onnx", located, tensors)
        ranges = located_ranges(proto, located)
        assert sorted(proto.graph.initializer[i].name for i in ranges) == (["b", "emb", "w"] if isolate else ["emb", "w"])
        sess = mapped_session(proto, folder / "m.onnx", ranges)
        assert [p.name for p in folder.iterdir()] == ["m.onnx"]
        np.testing.assert_array_equal(sess.run(None, {"ids": ids})[0], want)
        assert model.lazy is tensors  # not filled on the way
    # a view onnxruntime refuses (here: a range past the file's end): the session on the file itself
    wrong = {i: (offset + (1 << 30), length) for i, (offset, length) in ranges.items()}
    np.testing.assert_array_equal(mapped_session(proto, folder / "m.onnx", wrong).run(None, {"ids": ids})[0], want)
    assert [p.name for p in folder.iterdir()] == ["m.onnx"]
