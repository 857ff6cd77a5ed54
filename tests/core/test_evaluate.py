import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from studio.core.convert import session, to_onnx_proto
from studio.core.evaluate import count_parameters, measure, measure_latency, zipped_size
from studio.core.model import Model
from studio.core.training import drain


def test_sizes_are_the_bytes_of_the_shipped_file(demo_cnn, digits_data, tmp_path):
    proto = to_onnx_proto(demo_cnn)
    m = measure(demo_cnn, digits_data, proto=proto)
    path = tmp_path / "m.onnx"
    onnx.save_model(proto, str(path))
    assert m.size_bytes == path.stat().st_size
    with zipfile.ZipFile(tmp_path / "m.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        z.write(path, "model.onnx")
    assert m.zip_bytes == (tmp_path / "m.zip").stat().st_size
    assert m.parameters == sum(p.numel() for p in demo_cnn.obj.parameters())


def test_accuracy_matches_an_independent_count(demo_cnn, digits_data):
    m = measure(demo_cnn, digits_data)
    logits = demo_cnn.obj(__import__("torch").from_numpy(digits_data.x_test)).detach().numpy()
    assert m.accuracy == float((logits.argmax(1) == digits_data.y_test).mean())
    assert 0.97 < m.accuracy <= 1.0 and m.top5 >= m.accuracy


def test_quantization_scales_are_not_parameters():
    w = numpy_helper.from_array(np.array([[1, 0], [0, -3]], np.int8), "w_q")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "w_scale")
    zp = numpy_helper.from_array(np.array(0, np.int8), "w_zp")
    shape = numpy_helper.from_array(np.array([2, 2], np.int64), "shape")
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y0"]),
             helper.make_node("Reshape", ["y0", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], [w, scale, zp, shape])
    assert count_parameters(helper.make_model(graph)) == (4, 2)


def test_nonzeros_of_a_big_weight_are_counted_in_slices():
    """count_parameters counts a weight over one slice (2^20 values) slice by slice: the same count."""
    values = np.ones((3, 1 << 20), np.float32)
    values[0, :7] = 0
    values[2, -5:] = 0  # in the last slice
    w = numpy_helper.from_array(values, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1 << 20])], [w])
    assert count_parameters(helper.make_model(graph)) == (3 << 20, (3 << 20) - 12)


def test_big_tensors_are_counted_from_the_file_write_model_wrote(tmp_path, monkeypatch):
    """measure counts the tensors write_model wrote in slices from that file (copying one out of
    the proto held the GIL ~55 ms for BERT-base's embedding): the same numbers as from the proto,
    for tensors over the read slice (float32 with zeros in its last slice, float16, an int8
    weight behind a DequantizeLinear, an int64 table that is no parameter) and small ones."""
    from studio.core import convert
    from studio.core.convert import write_model
    from studio.core.io import file_tensors

    monkeypatch.setattr(convert, "WRITE_WHOLE_UNDER", 0)  # the streamed path for a ~30 MB model
    rng = np.random.default_rng(0)
    emb = rng.random((3000, 1024), dtype=np.float32)  # 12 MB: three read slices
    emb[0, :9] = 0
    emb[-1, -3:] = 0
    emb[1500, 100:200] = -0.0
    half = (rng.random((2200, 1024)) > 0.5).astype(np.float16)  # 4.5 MB, about half zeros
    q = rng.integers(-3, 3, (5000, 1024), dtype=np.int8)  # 5 MB of int8 weights
    table = np.arange(600_000, dtype=np.int64) % 7  # 4.8 MB of integers: not parameters
    inits = [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(half, "half"),
             numpy_helper.from_array(q, "q"), numpy_helper.from_array(np.array(0.1, np.float32), "q_scale"),
             numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.ones(4, np.float32), "small")]
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["a"]), helper.make_node("Gather", ["half", "ids"], ["b"]),
             helper.make_node("DequantizeLinear", ["q", "q_scale"], ["w"]), helper.make_node("Gather", ["w", "ids"], ["c"]),
             helper.make_node("Gather", ["table", "ids"], ["d"]), helper.make_node("Mul", ["small", "small"], ["e"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
                              [helper.make_tensor_value_info(n, t, None) for n, t in
                               (("a", TensorProto.FLOAT), ("b", TensorProto.FLOAT16), ("c", TensorProto.FLOAT),
                                ("d", TensorProto.INT64), ("e", TensorProto.FLOAT))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    located: dict = {}
    write_model(model, tmp_path / "m.onnx", located)
    assert sorted(t.name for t, _, _ in located.values()) == ["emb", "half", "q", "table"]
    assert file_tensors.CHUNK_BYTES < emb.nbytes  # counted in several reads
    expected = (emb.size + half.size + q.size + 4,
                int(np.count_nonzero(emb) + np.count_nonzero(half) + np.count_nonzero(q)) + 4)
    assert count_parameters(model) == expected
    assert count_parameters(model, (tmp_path / "m.onnx", located)) == expected
    assert session(str(tmp_path / "m.onnx")).run(["c"], {"ids": np.array([0, 1, 2199])})[0].shape == (3, 1024)


def test_zipped_size_in_chunks_is_the_size_of_the_archive_writestr_makes():
    """zipped_size compresses in 16 MB chunks into a sink that keeps no bytes (the archive of a
    440 MB model of random weights was another 400 MB in memory): the count is the size of the
    archive zipfile writes in one go, to the byte, over several chunks."""
    import io

    from studio.core.evaluate import ZIP_CHUNK

    rng = np.random.default_rng(0)
    values = rng.standard_normal(ZIP_CHUNK // 4 * 2 + 1000).astype(np.float32)
    blob = (values * (rng.random(values.size) < 0.3)).tobytes()  # partly compressible, over 2 chunks
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        archive.writestr("model.onnx", blob)
    seen = []
    assert zipped_size(blob, seen.append) == buffer.tell() < len(blob)
    assert len(seen) == 3 and seen[-1] == 1.0


def test_zipped_size_of_zeros_is_small():
    assert zipped_size(bytes(1_000_000)) < 5_000 < zipped_size(np.random.default_rng(0).bytes(1_000_000)) - 900_000


def test_latency_measures_a_bigger_model_as_slower(demo_mlp):
    import torch

    small = to_onnx_proto(demo_mlp)
    big_net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048), torch.nn.Linear(2048, 10))
    big = to_onnx_proto(Model(big_net.eval(), "torch", (1, 64)))
    small_ms, big_ms = drain(measure_latency([small, big], (1, 64), batches=(16,), rounds=3))
    assert big_ms[16] > 3 * small_ms[16]


def test_latency_gives_each_round_when_asked(demo_mlp):
    """rounds_out: every model's time in each round, the rounds of all models side by side (the
    benchmark's spread of a lead is the per-round ratio); their median is the reported time."""
    import statistics

    proto = to_onnx_proto(demo_mlp)
    got: list = []
    medians = drain(measure_latency([proto, proto], (1, 64), batches=(1, 8), rounds=5, min_round_s=0.002,
                                    rounds_out=got))
    assert len(got) == 2 and all(set(g) == {1, 8} and all(len(ts) == 5 for ts in g.values()) for g in got)
    assert all(statistics.median(g[b]) == m[b] for g, m in zip(got, medians) for b in (1, 8))


def test_a_latency_budget_times_a_slow_model_in_fewer_rounds_never_under_three():
    """BERT-base at batch 32 takes ~20 s a call on one thread: seven rounds of two stages were
    minutes of a 5-minute goal. A budget cuts the rounds of a slow batch size (not under three)
    and leaves a fast one's alone; the counts come back to be shown beside the numbers."""
    from studio.core.evaluate import MIN_ROUNDS, measure_latency_all

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 256])
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", "w"], [f"h{i + 1}" if i < 39 else "y"])
             for i in range(40)]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    _, _, rounds = drain(measure_latency_all([proto], (1, 256), batches=(1, 512), rounds=9, budget_s=0.05))
    assert rounds[512] == MIN_ROUNDS  # 40 MatMuls of 512x256x256: far over 0.05 s a round
    assert min(rounds.values()) >= MIN_ROUNDS
    _, _, unbounded = drain(measure_latency_all([proto], (1, 256), batches=(512,), rounds=9))
    assert unbounded == {512: 9}


def test_the_stage_table_says_how_many_rounds_each_batch_was_timed_in():
    from studio.core.evaluate import Measurement
    from studio.core.stage_table import _rounds

    assert _rounds(Measurement(latency_rounds={1: 7, 32: 7})) == "7 interleaved rounds"
    assert _rounds(Measurement(latency_rounds={32: 3, 1: 7})) == "7 (batch 1) and 3 (batch 32) interleaved rounds"
