"""The window's ONNX load (io.load(isolate=True)): parsed in a warm child process, which sends
the model without its big initializers' bytes and where they lie in the file; they are read
from the user's file a tensor at a time. Same model bit for bit, same refusals as the
in-process load, nothing written in the temporary folder, a crash or a hang in the child
refused in one line."""

import os
import signal
import tempfile
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from studio.core import io
from studio.core.errors import LoadError, StudioError
from studio.core.io.onnx_child import PARSER
from tests.hostile.make_files import build, expected


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's folder for this test alone, to see what the load leaves in it."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def chain(folder, layers=3, width=64, name="chain.onnx", external=False, constants=False):
    """MatMul -> Relu layers with float weights, a Constant-node tensor and an If whose branches
    hold a weight of their own; `external`: the weights in a sidecar beside the file;
    `constants`: the weights in Constant nodes (the child parses and sends them all: slow)."""
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for k in range(layers):
        weight = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), f"w{k}")
        if constants:
            nodes.append(helper.make_node("Constant", [], [f"w{k}"], value=weight))
        else:
            inits.append(weight)
        nodes += [helper.make_node("MatMul", [x, f"w{k}"], [f"m{k}"]), helper.make_node("Relu", [f"m{k}"], [f"r{k}"])]
        x = f"r{k}"
    bias = numpy_helper.from_array(rng.standard_normal((1, width)).astype(np.float32), "bias_value")
    nodes.append(helper.make_node("Constant", [], ["bias"], value=bias))

    def branch(tag):
        w = numpy_helper.from_array(rng.standard_normal((1, width)).astype(np.float32), f"{tag}_w")
        return helper.make_graph([helper.make_node("Add", [x, f"{tag}_w"], [f"{tag}_out"])], tag, [],
                                 [helper.make_tensor_value_info(f"{tag}_out", TensorProto.FLOAT, [1, width])], [w])

    flag = numpy_helper.from_array(np.array(True), "flag")
    nodes += [helper.make_node("If", ["flag"], ["branched"], then_branch=branch("then"), else_branch=branch("else")),
              helper.make_node("Add", ["branched", "bias"], ["y"])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])], [*inits, flag])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / name
    if external:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=name + ".data", size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))
    return path


def serialized(proto) -> bytes:
    """The model's bytes, with data_location=DEFAULT written the same way: onnx's own loader of
    external data sets the field, which other loads leave unset (the same value)."""
    from studio.core.io.onnx_io import _all_tensors

    for t in _all_tensors(proto.graph):
        if t.data_location == TensorProto.DEFAULT:
            t.ClearField("data_location")
    return proto.SerializeToString()


@pytest.mark.parametrize("external", [False, True])
def test_the_isolated_load_is_the_in_process_load_bit_for_bit(tmp_path, private_tmp, external):
    path = chain(tmp_path, external=external)
    isolated, direct = io.load(path, isolate=True), io.load(path)
    assert serialized(isolated.obj) == serialized(direct.obj)
    assert isolated.meta == direct.meta and isolated.meta["external_data"] is external
    assert list(private_tmp.iterdir()) == [], "the private copy was left behind"


HOSTILE = {name: text for name, text in expected().items() if name.endswith(".onnx")}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile") / "files"
    return folder, build(folder)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_onnx_files_are_refused_as_in_process(hostile, private_tmp, name):
    folder, marker = hostile
    with pytest.raises(StudioError) as direct:
        io.load(folder / name)
    with pytest.raises(StudioError) as isolated:
        io.load(folder / name, isolate=True)
    assert str(isolated.value) == str(direct.value) and HOSTILE[name] in str(isolated.value)
    assert "\n" not in str(isolated.value)
    assert list(private_tmp.iterdir()) == [] and not marker.exists()


def test_a_crash_in_the_child_is_refused_in_one_line_and_the_next_load_works(tmp_path, private_tmp):
    path = chain(tmp_path, layers=40, width=1024, constants=True)  # 160 MB the child parses and sends
    PARSER.start()
    child = PARSER.pid()

    def crash_it_while_it_parses():  # a real signal, as a segfault in protobuf's or onnx's C++ gives
        end = time.monotonic() + 60
        while not PARSER.lock.locked() and time.monotonic() < end:
            time.sleep(0.001)
        os.kill(child, signal.SIGSEGV)

    killer = threading.Thread(target=crash_it_while_it_parses)
    killer.start()
    try:
        with pytest.raises(LoadError) as err:
            io.load(path, isolate=True)
    finally:
        killer.join()
    assert str(err.value) == "chain.onnx: parsing it crashed onnx (SIGSEGV); refused"
    assert list(private_tmp.iterdir()) == []
    small = chain(tmp_path, name="small.onnx")
    assert io.load(small, isolate=True).obj.graph.node  # a new child parses the next file
    assert PARSER.pid() not in (None, child)


def test_a_parse_over_its_time_budget_is_refused(tmp_path):
    path = chain(tmp_path, layers=40, width=1024, constants=True)
    with pytest.raises(LoadError, match=r"^chain.onnx: parsing it took over 0 s; refused$"):
        PARSER.parse(path, timeout=0.05)
    assert PARSER.pid() is None  # killed; the next request starts another


def test_the_big_weights_come_from_the_file_itself_and_a_changed_file_is_refused(tmp_path, private_tmp):
    """The child sends where the big initializers' bytes are; they are read from the file."""
    from studio.core.io.onnx_child import parse_reduced

    path = chain(tmp_path, layers=4, width=256)
    proto, ranges = parse_reduced(path)
    data = path.read_bytes()
    direct = onnx.load_model(str(path))
    assert len(proto.SerializeToString()) < 20_000 < len(data)
    for t, where in zip(direct.graph.initializer, ranges):
        if t.name.startswith("w"):  # 256 KB each
            offset, length = where
            assert data[offset:offset + length] == t.raw_data
    assert io.load(path, isolate=True).obj.graph.initializer[0].raw_data == direct.graph.initializer[0].raw_data
    # the file cut short between the child's parse and the read here
    from studio.core.io.onnx_child import from_reply

    reply = PARSER.parse(path)
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(LoadError, match=r"^chain.onnx: cannot read it \(tensor 'w\d' is not where it was\)$"):
        from_reply(path, *reply)
    assert list(private_tmp.iterdir()) == []


def test_a_file_the_walk_cannot_follow_is_parsed_whole(tmp_path):
    """A field protobuf skips but the walk does not follow (a group) leaves the parse to
    protobuf: the same model, its weights inline."""
    from studio.core.io.onnx_child import parse_reduced

    path = chain(tmp_path, layers=2, width=64)
    data = path.read_bytes()
    odd = tmp_path / "odd.onnx"
    odd.write_bytes(data + bytes([(15 << 3) | 3, 0x08, 0x01, (15 << 3) | 4]))  # an unknown group, field 15
    assert parse_reduced(odd) is None
    assert serialized(io.load(odd, isolate=True).obj) == serialized(io.load(odd).obj)


def test_repeated_fields_are_read_as_protobuf_reads_them(tmp_path):
    """A second `graph` field merges into the first (its initializers follow); of two raw_data
    fields in a tensor the last counts: the weights read from the file are the ones protobuf
    parses."""
    from studio.core.io.onnx_child import _encode_varint

    path = chain(tmp_path, layers=2, width=64)
    rng = np.random.default_rng(1)
    first, last = (rng.standard_normal((64, 64)).astype(np.float32).tobytes() for _ in range(2))
    extra = numpy_helper.from_array(np.zeros((64, 64), np.float32), "extra").SerializeToString()
    tensor = extra + b"".join(bytes([(9 << 3) | 2]) + _encode_varint(len(raw)) + raw for raw in (first, last))
    graph = bytes([(5 << 3) | 2]) + _encode_varint(len(tensor)) + tensor
    odd = tmp_path / "merged.onnx"
    odd.write_bytes(path.read_bytes() + bytes([(7 << 3) | 2]) + _encode_varint(len(graph)) + graph)
    isolated, direct = io.load(odd, isolate=True).obj, io.load(odd).obj
    assert direct.graph.initializer[-1].name == "extra" and direct.graph.initializer[-1].raw_data == last
    assert serialized(isolated) == serialized(direct)
