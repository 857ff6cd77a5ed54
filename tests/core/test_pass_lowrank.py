import torch
from torch import nn

from studio.core.passes.base import Context
from studio.core.passes.registry import create
from tests.core.test_pass_common import assert_cancel_leaves_input, onnx_matches, resnet_model, run, same_state, state, transformer_model


def test_cnn_ratio_factors_replace_layers(demo_cnn, digits_data):
    before = state(demo_cnn)
    result = run(create("lowrank.svd", rank_by="ratio", rank_ratio=0.25), demo_cnn, Context())
    assert same_state(before, state(demo_cnn))
    m = result.model.obj
    assert isinstance(m.fc1, nn.Sequential) and isinstance(m.conv2, nn.Sequential)
    r = result.layers["fc1"]["rank"]
    assert r == 32 and m.fc1[0].out_features == r and m.fc1[1].in_features == r
    assert torch.linalg.matrix_rank(m.fc1[1].weight @ m.fc1[0].weight) == r
    conv_first, conv_second = m.conv2
    assert conv_first.kernel_size == (3, 3) and conv_second.kernel_size == (1, 1)
    assert conv_first.out_channels == result.layers["conv2"]["rank"] == 16  # 0.25 x min(64, 32*3*3)
    assert result.layers["conv1"]["rank"] == 3  # ceil(0.25 x min(32, 1*3*3))
    assert sum(p.numel() for p in m.parameters()) < sum(p.numel() for p in demo_cnn.obj.parameters())
    onnx_matches(result.model)


def test_full_energy_is_exact_and_energy_picks_rank(demo_mlp):
    exact = run(create("lowrank.svd", rank_by="energy", energy=1.0), demo_mlp, Context())
    # a full-rank factorization saves nothing: every layer is kept
    assert not any(r["factorized"] for r in exact.layers.values())
    result = run(create("lowrank.svd", rank_by="energy", energy=0.8), demo_mlp, Context())
    w = demo_mlp.obj.fc1.weight.detach().double()
    s = torch.linalg.svdvals(w)
    kept = (s[: result.layers["fc1"]["rank"]] ** 2).sum() / (s**2).sum()
    kept_less = (s[: result.layers["fc1"]["rank"] - 1] ** 2).sum() / (s**2).sum()
    assert kept >= 0.8 > kept_less
    onnx_matches(result.model)


def test_resnet_and_transformer():
    result = run(create("lowrank.svd", rank_by="ratio", rank_ratio=0.5), resnet_model(), Context())
    assert isinstance(result.model.obj.layers[2].conv2, nn.Sequential)
    onnx_matches(result.model)
    tr = transformer_model()
    result = run(create("lowrank.svd", rank_by="ratio", rank_ratio=0.25), tr, Context())
    assert isinstance(result.model.obj.block.linear1, nn.Sequential)
    # attention's out_proj is read directly by the attention function: never replaced
    assert "block.self_attn.out_proj" not in result.layers
    onnx_matches(result.model)


def test_cancel(demo_cnn):
    assert_cancel_leaves_input(create("lowrank.svd"), demo_cnn, Context())
