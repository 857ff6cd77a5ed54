import pytest

from studio.core.convert import to_onnx_model
from studio.core.errors import Cancelled, StudioError
from studio.core.passes.base import Context
from studio.core.passes.registry import create
from tests.core.test_pass_common import onnx_matches, resnet_model, run, same_state, state, transformer_model


def accuracy(model, data):
    from studio.core.convert import predict

    x = data.shaped(data.x_test, model.input_shape)
    return float((predict(model, x).argmax(1) == data.y_test).mean())


def test_cnn_channels_physically_removed_rounded_and_classifier_kept(demo_cnn):
    before = state(demo_cnn)
    result = run(create("prune.structured", ratio=0.5, round_to=8), demo_cnn, Context())
    assert same_state(before, state(demo_cnn))
    module = result.model.obj
    assert module.conv1.out_channels == 16 and module.conv2.in_channels == 16
    assert module.conv2.out_channels % 8 == 0 and module.conv2.out_channels < 64
    assert module.fc1.in_features == module.conv2.out_channels * 16  # the flatten followed
    assert module.fc2.out_features == 10
    assert result.layers["conv1"]["removed_out"] == 16 and result.layers["fc2"]["removed_out"] == 0
    assert onnx_matches(result.model) < 1e-4


def test_resnet_residuals_taylor(digits_data):
    model = resnet_model()
    before = state(model)
    result = run(create("prune.structured", ratio=0.5, importance="taylor"), model, Context(data=digits_data))
    assert same_state(before, state(model))
    m = result.model.obj
    # the residual add couples conv2 of each block with its shortcut: both shrank alike
    for block in m.layers[1:]:
        assert block.conv2.out_channels == block.shortcut[0].out_channels == block.bn2.num_features
        assert block.conv2.out_channels < 64 * 2
    assert m.stem[0].out_channels == m.layers[0].conv2.out_channels  # identity shortcut of block 0
    assert m.fc.out_features == 10
    onnx_matches(result.model)


def test_cnn_fine_tune_recovers(demo_cnn, digits_data):
    pruned = run(create("prune.structured", ratio=0.6), demo_cnn, Context())
    tuned = run(create("prune.structured", ratio=0.6, fine_tune_epochs=1, learning_rate=2e-3), demo_cnn,
                Context(data=digits_data))
    assert accuracy(tuned.model, digits_data) > 0.9
    assert accuracy(tuned.model, digits_data) >= accuracy(pruned.model, digits_data)


def test_transformer_block_mlp_and_heads(digits_data):
    model = transformer_model()
    before = state(model)
    result = run(create("prune.structured", ratio=0.5, round_to=1), model, Context())
    assert same_state(before, state(model))
    block = result.model.obj.block
    assert block.linear1.out_features == 16 and block.linear2.in_features == 16
    # the attention's width does not shrink with Torch-Pruning 1.6 on this block: said, not hidden
    assert block.self_attn.embed_dim == 16 and any("attention layers kept" in w for w in result.warnings)
    assert result.model.obj.head.out_features == 10
    onnx_matches(result.model)


def test_bn_scale_needs_batch_norm(demo_cnn):
    with pytest.raises(StudioError, match="batch-norm"):
        run(create("prune.structured", importance="bn_scale"), demo_cnn, Context())
    result = run(create("prune.structured", importance="bn_scale", ratio=0.25), resnet_model(), Context())
    assert result.model.obj.layers[2].conv1.out_channels < 128


def test_ignore_keeps_a_layer_whole(demo_cnn):
    result = run(create("prune.structured", ratio=0.5, ignore=["conv1"]), demo_cnn, Context())
    assert result.model.obj.conv1.out_channels == 32
    assert result.model.obj.conv2.out_channels < 64


def test_onnx_model_converted_first(demo_cnn):
    onnx_model = to_onnx_model(demo_cnn)
    result = run(create("prune.structured", ratio=0.5), onnx_model, Context())
    assert result.model.is_torch
    params = sum(p.numel() for p in result.model.obj.parameters())
    assert params < 0.5 * sum(p.numel() for p in demo_cnn.obj.parameters())
    onnx_matches(result.model)


def test_cancel_raises_and_leaves_input(demo_cnn, digits_data):
    before = state(demo_cnn)
    context = Context(data=digits_data)
    context.cancel_event.set()
    with pytest.raises(Cancelled):
        run(create("prune.structured", ratio=0.5), demo_cnn, context)
    assert same_state(before, state(demo_cnn))
    # cancel while fine-tuning
    context = Context(data=digits_data)
    gen = create("prune.structured", ratio=0.5, fine_tune_epochs=3).apply(demo_cnn, context)
    for fraction, _ in gen:
        if fraction > 0.4:
            context.cancel_event.set()
            with pytest.raises(Cancelled):
                next(gen)
            break
    assert same_state(before, state(demo_cnn))
