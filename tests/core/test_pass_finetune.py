import numpy as np
import pytest
import torch

from studio.core.convert import predict, to_onnx_model
from studio.core.errors import StudioError
from studio.core.passes.base import Context
from studio.core.passes.registry import create
from tests.core.test_pass_common import assert_cancel_leaves_input, onnx_matches, run, same_state, state


def accuracy(model, data):
    x = data.shaped(data.x_test, model.input_shape)
    return float((predict(model, x).argmax(1) == data.y_test).mean())


def test_recovers_and_keeps_zeros(demo_mlp, digits_data):
    pruned = run(create("prune.magnitude", sparsity=0.95), demo_mlp, Context()).model
    before = state(pruned)
    result = run(create("finetune", epochs=2, learning_rate=1e-3), pruned, Context(data=digits_data))
    assert same_state(before, state(pruned))
    for name in ("fc1", "fc2", "fc3"):
        old = pruned.obj.get_submodule(name).weight
        new = result.model.obj.get_submodule(name).weight
        assert torch.equal(new == 0, old == 0)  # exactly the same zeros
        assert not torch.equal(new, old)  # and the rest trained
    assert f"{name}.weight" in result.layers
    assert accuracy(result.model, digits_data) > accuracy(pruned, digits_data)
    onnx_matches(result.model)


def test_keep_zeros_off_lets_them_move(demo_mlp, digits_data):
    pruned = run(create("prune.magnitude", sparsity=0.9), demo_mlp, Context()).model
    result = run(create("finetune", epochs=1, keep_zeros=False), pruned, Context(data=digits_data))
    assert float((result.model.obj.fc1.weight == 0).float().mean()) < 0.5


def test_needs_labelled_data(demo_mlp):
    with pytest.raises(StudioError, match="needs data"):
        run(create("finetune"), demo_mlp, Context())


def test_onnx_model_is_converted(demo_mlp, digits_data):
    result = run(create("finetune", epochs=1), to_onnx_model(demo_mlp), Context(data=digits_data))
    assert result.model.is_torch
    assert accuracy(result.model, digits_data) > 0.9
    onnx_matches(result.model)


def test_cancel_while_training(demo_mlp, digits_data):
    assert_cancel_leaves_input(create("finetune", epochs=3), demo_mlp, Context(data=digits_data), after_yields=2)


def test_residual_net_after_structured_pruning(digits_data):
    """The demo ResNet (residual adds, batch norm) after channel pruning: fine-tune recovers
    accuracy, batch-norm statistics stay consistent, and the export matches in onnxruntime."""
    from tests.core.test_pass_common import resnet_model

    model = resnet_model()
    pruned = run(create("prune.structured", ratio=0.5), model, Context()).model
    result = run(create("finetune", epochs=2, learning_rate=1e-3), pruned, Context(data=digits_data))
    assert accuracy(result.model, digits_data) > max(0.9, accuracy(pruned, digits_data))
    onnx_matches(result.model, atol=1e-3)


def test_transformer_block_keeps_its_own_labels():
    """A transformer block fine-tunes on sequence inputs labelled by its own predictions."""
    from studio.core.data import Data
    from tests.core.test_pass_common import transformer_model

    model = transformer_model()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 8, 16)).astype(np.float32)
    y = predict(model, x).argmax(1)  # the model's own labels: fine-tuning must keep them
    data = Data("self", x[:64], x[64:], y[:64], y[64:])
    before = state(model)
    result = run(create("finetune", epochs=2, learning_rate=1e-4), model, Context(data=data))
    assert same_state(before, state(model))
    assert (predict(result.model, x[64:]).argmax(1) == y[64:]).mean() > 0.8
    onnx_matches(result.model, atol=1e-3)
