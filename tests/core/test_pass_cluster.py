import numpy as np
import pytest
import torch
from onnx import numpy_helper

from studio.core import packed
from studio.core.convert import predict, run_session, session, to_onnx_model, to_onnx_proto
from studio.core.errors import StudioError
from studio.core.passes.base import Context
from studio.core.passes.cluster import kmeans_1d
from studio.core.passes.registry import create
from tests.core.test_pass_common import assert_cancel_leaves_input, onnx_matches, resnet_model, run, same_state, state, transformer_model


def weight_layers(module):
    return {n: m.weight.detach() for n, m in module.named_modules() if type(m).__name__ in ("Linear", "Conv2d")}


def test_kmeans_1d_linear_init_finds_clusters():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(c, 0.01, 200) for c in (-1.0, 0.0, 2.0)])
    centroids, idx = kmeans_1d(values, 3)
    assert np.allclose(np.sort(centroids), [-1, 0, 2], atol=0.01)
    assert len(np.unique(idx)) == 3


def test_cnn_at_most_2_to_the_bits_values_and_zeros_kept(demo_cnn, digits_data):
    pruned = run(create("prune.magnitude", sparsity=0.8), demo_cnn, Context()).model
    before = state(pruned)
    result = run(create("cluster.kmeans", bits=4), pruned, Context())
    assert same_state(before, state(pruned))
    for name, w in weight_layers(result.model.obj).items():
        assert torch.unique(w).numel() <= 16, name
        zeros_before = pruned.obj.get_submodule(name).weight.detach() == 0
        assert torch.equal(w == 0, zeros_before), name  # zeros exactly where pruning put them
    assert any("does not change latency" in msg for msg in result.warnings)
    x = digits_data.shaped(digits_data.x_test, demo_cnn.input_shape)
    assert (predict(result.model, x).argmax(1) == digits_data.y_test).mean() > 0.9
    onnx_matches(result.model)


def test_centroid_fine_tune_keeps_ties_and_zeros(demo_mlp, digits_data):
    pruned = run(create("prune.magnitude", sparsity=0.9), demo_mlp, Context()).model
    plain = run(create("cluster.kmeans", bits=3), pruned, Context()).model
    tuned = run(create("cluster.kmeans", bits=3, fine_tune_epochs=1, learning_rate=1e-4), pruned,
                Context(data=digits_data)).model
    for name, w in weight_layers(tuned.obj).items():
        assert torch.unique(w).numel() <= 8, name
        assert torch.equal(w == 0, pruned.obj.get_submodule(name).weight.detach() == 0)
    assert not torch.equal(weight_layers(tuned.obj)["fc1"], weight_layers(plain.obj)["fc1"])  # centroids moved
    # only the clustered weights train: biases unchanged
    assert torch.equal(tuned.obj.fc1.bias, pruned.obj.fc1.bias)


def test_resnet_and_transformer_cluster_and_export():
    for model in (resnet_model(), transformer_model()):
        result = run(create("cluster.kmeans", bits=2), model, Context())
        for name, w in weight_layers(result.model.obj).items():
            assert torch.unique(w).numel() <= 4, name
        onnx_matches(result.model, atol=1e-3)


def test_pack_unpack_bit_exact_and_runs(demo_cnn, tmp_path, digits_data):
    pruned = run(create("prune.magnitude", sparsity=0.9), demo_cnn, Context()).model
    clustered = run(create("cluster.kmeans", bits=4), pruned, Context()).model
    proto = to_onnx_proto(clustered)
    info = packed.pack(proto, tmp_path / "cnn.spk")
    assert info["tensors"] >= 4  # the four weights (and biases with few distinct values)
    restored = packed.unpack(tmp_path / "cnn.spk")
    ours = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    back = {i.name: numpy_helper.to_array(i) for i in restored.graph.initializer}
    assert ours.keys() == back.keys()
    for name in ours:
        assert ours[name].dtype == back[name].dtype and ours[name].shape == back[name].shape
        assert ours[name].tobytes() == back[name].tobytes(), name  # bit for bit
    x = digits_data.shaped(digits_data.x_test, demo_cnn.input_shape)
    assert np.array_equal(run_session(session(restored), x), run_session(session(proto), x))
    # the point of it: far smaller than the float32 ONNX
    assert info["bytes"] * 15 < len(to_onnx_proto(demo_cnn).SerializeToString())


def test_unpack_rejects_other_files(tmp_path):
    path = tmp_path / "x.spk"
    path.write_bytes(b"not a packed file")
    with pytest.raises(StudioError, match="not a studio packed file"):
        packed.unpack(path)
    path.write_bytes(packed.MAGIC + b"garbage")
    with pytest.raises(StudioError, match="damaged"):
        packed.unpack(path)


def test_onnx_initializers_cluster_and_pack(demo_mlp, tmp_path):
    onnx_model = to_onnx_model(demo_mlp)
    before = onnx_model.obj.SerializeToString()
    result = run(create("cluster.kmeans", bits=4), onnx_model, Context())
    assert onnx_model.obj.SerializeToString() == before
    inits = {i.name: numpy_helper.to_array(i) for i in result.model.obj.graph.initializer}
    for record in result.layers.values():
        assert len(np.unique(inits[record["initializer"]])) <= 16
    packed.pack(result.model, tmp_path / "mlp.spk")
    x = demo_mlp.example_input(8)
    assert np.array_equal(run_session(session(packed.unpack(tmp_path / "mlp.spk")), x),
                          run_session(session(result.model.obj), x))


def test_cancel(demo_cnn):
    assert_cancel_leaves_input(create("cluster.kmeans"), demo_cnn, Context())


def test_convs_followed_by_batch_norm_keep_their_clusters_in_the_exported_file(digits_data):
    """The ONNX export folds each eval-mode BatchNorm into its conv, scaling every output channel
    by its own factor: clustered before folding, a conv came out with 2^bits x channels distinct
    values and the packed file stored the demo ResNet's convs unclustered (61 KB). The pass folds
    first; every conv of the exported file is packed as a codebook of at most 2^bits values."""
    from studio.core import zoo

    model = zoo.load("resnet")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.obj.modules())
    result = run(create("cluster.kmeans", bits=4), model, Context())
    assert "after folding" in result.summary and not any("not folded" in w for w in result.warnings)
    proto = to_onnx_proto(result.model)
    convs = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    _, entries = packed.packed_bytes(proto)
    packed_names = {e["name"]: e["values"] for e in entries}
    assert convs and convs <= packed_names.keys(), sorted(convs - packed_names.keys())
    assert all(packed_names[c] <= 16 for c in convs)
    x = digits_data.shaped(digits_data.x_test[:64], model.input_shape)
    assert np.abs(predict(result.model, x) - run_session(session(proto), x)).max() < 1e-3
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in result.model.obj.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.obj.modules())  # the input is untouched
