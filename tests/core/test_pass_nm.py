import numpy as np
import pytest
from onnx import numpy_helper

from studio.core.convert import predict, run_session, session, to_onnx_model
from studio.core.passes.base import Context
from studio.core.passes.nm import check_pattern
from studio.core.passes.registry import create
from tests.core.test_pass_common import assert_cancel_leaves_input, onnx_matches, resnet_model, run, same_state, state, transformer_model


def weights(module):
    return {n: m.weight.detach().numpy() for n, m in module.named_modules()
            if type(m).__name__ in ("Linear", "Conv2d")}


def test_2_4_on_cnn_every_group(demo_cnn):
    before = state(demo_cnn)
    result = run(create("prune.nm"), demo_cnn, Context())
    assert same_state(before, state(demo_cnn))
    w = weights(result.model.obj)
    # conv1 has 1 input channel: not a multiple of 4, left dense and said so
    assert "conv1" not in result.layers and any("conv1" in msg for msg in result.warnings)
    for name in ("conv2", "fc1", "fc2"):
        assert check_pattern(w[name], 2, 4, axis=1)
        assert result.layers[name]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert any("does not speed up onnxruntime" in msg for msg in result.warnings)
    onnx_matches(result.model)


def test_other_pattern_on_resnet_and_transformer():
    result = run(create("prune.nm", n=1, m=8), resnet_model(), Context())
    w = weights(result.model.obj)
    assert check_pattern(w["layers.1.conv2"], 1, 8, axis=1)
    assert not check_pattern(weights(resnet_model().obj)["layers.1.conv2"], 1, 8, axis=1)
    onnx_matches(result.model)
    tr = run(create("prune.nm"), transformer_model(), Context())
    for name in ("embed", "block.linear1", "block.linear2", "head"):
        assert check_pattern(weights(tr.model.obj)[name], 2, 4, axis=1), name
    onnx_matches(tr.model)


def test_fine_tune_keeps_pattern(demo_mlp, digits_data):
    result = run(create("prune.nm", fine_tune_epochs=1), demo_mlp, Context(data=digits_data))
    w = weights(result.model.obj)
    assert all(check_pattern(w[n], 2, 4, axis=1) for n in ("fc1", "fc2", "fc3"))
    x = digits_data.shaped(digits_data.x_test, demo_mlp.input_shape)
    assert (predict(result.model, x).argmax(1) == digits_data.y_test).mean() > 0.9


def test_onnx_initializers(demo_mlp):
    onnx_model = to_onnx_model(demo_mlp)
    before = onnx_model.obj.SerializeToString()
    result = run(create("prune.nm"), onnx_model, Context())
    assert onnx_model.obj.SerializeToString() == before
    assert result.model.is_onnx and len(result.layers) == 3
    inits = {i.name: numpy_helper.to_array(i) for i in result.model.obj.graph.initializer}
    for record in result.layers.values():
        # torch's exporter writes Gemm with transB=1: weight [out, in], groups along axis 1
        assert check_pattern(inits[record["initializer"]], 2, 4, axis=1)
    x = demo_mlp.example_input(16)
    torch_nm = run(create("prune.nm"), demo_mlp, Context()).model
    assert np.abs(run_session(session(result.model.obj), x) - predict(torch_nm, x)).max() < 1e-4


def test_cancel(demo_cnn):
    assert_cancel_leaves_input(create("prune.nm"), demo_cnn, Context())


def test_n_must_be_below_m():
    from studio.core.errors import StudioError

    with pytest.raises(StudioError, match="n must be smaller"):
        create("prune.nm", n=4, m=4)
