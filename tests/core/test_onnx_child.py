"""The window's ONNX load (io.load(isolate=True)): parsed in a warm child process, written as a
private split copy, read back a tensor at a time. Same model bit for bit, same refusals as the
in-process load, nothing left behind in the temporary folder, a crash or a hang in the child
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


def chain(folder, layers=3, width=64, name="chain.onnx", external=False):
    """MatMul -> Relu layers with float weights, a Constant-node tensor and an If whose branches
    hold a weight of their own; `external`: the weights in a sidecar beside the file."""
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for k in range(layers):
        inits.append(numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), f"w{k}"))
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
    external data sets the field, the split copy's reader clears it (the same value)."""
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
    path = chain(tmp_path, layers=40, width=1024)  # 160 MB: parsing it takes a while
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


def test_a_parse_over_its_time_budget_is_refused(tmp_path, private_tmp):
    path = chain(tmp_path, layers=40, width=1024)
    with pytest.raises(LoadError, match=r"^chain.onnx: parsing it took over 0 s; refused$"):
        PARSER.split(path, private_tmp, timeout=0.05)
    assert PARSER.pid() is None  # killed; the next request starts another


def test_copies_left_by_a_studio_that_died_are_removed_and_a_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from studio.core.io.onnx_child import sweep

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f"studio-open-{dead.pid}-abc"
    mine = tmp_path / f"studio-open-{os.getpid()}-def"
    other = tmp_path / "studio-open-notes"
    for folder in (left, mine, other):
        folder.mkdir()
        (folder / "model.data").write_bytes(b"x")
    sweep(str(tmp_path))
    assert not left.exists() and mine.exists() and other.exists()
