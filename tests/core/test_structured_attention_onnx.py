"""prune.structured on the corpus's exported attention models (tests/corpus): what an ONNX
transformer can lose after the conversion to torch. The feed-forward layers of the ViT shrink
(first Linear's outputs, second's inputs), and the tiny BERT's attention output projection
shrinks with the layer after it although the exported graph reshapes between them to a shape
that holds the width as a number (the reshape takes the new width). The same models as torch
modules: nn.TransformerEncoder's feed-forward layers, nn.MultiheadAttention's head dims or whole
heads. The pruned model is exported and run in onnxruntime."""

from __future__ import annotations

import re

import numpy as np
import pytest

from studio.core import io
from studio.core.convert import run_session_all, session, to_onnx_proto
from studio.core.passes.base import Context
from studio.core.passes.registry import create
from studio.core.passes.structured import followed_shape
from studio.core.signature import torch_args
from tests.core.test_pass_common import run
from tests.corpus import table


def corpus_model(name: str, form: str):
    return io.load(table.file_for(name, form, table.cache_dir()))


def check_runs(model, result, classes: int) -> None:
    """The stage's ONNX runs in onnxruntime with the original's output shape and agrees with the
    pruned torch model."""
    import torch

    x = model.example_inputs(3)
    want = run_session_all(session(model.obj), x)
    got = run_session_all(session(to_onnx_proto(result.model)), x)
    assert [a.shape for a in got] == [a.shape for a in want] == [(3, classes)]
    with torch.no_grad():
        ours = result.model.obj(*torch_args(x, result.model.io))
    assert np.abs(got[0] - ours.numpy()).max() < 1e-4


def params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def params_before_after(summary: str) -> tuple[int, int]:
    found = re.search(r"parameters ([\d,]+) -> ([\d,]+)", summary)
    return int(found[1].replace(",", "")), int(found[2].replace(",", ""))


def test_followed_shape_moves_only_one_to_one_dims():
    # [T * B, E] -> [T, B, E] with E stored: E follows, the inferred batch stays -1
    assert followed_shape((20, 16), (10, 2, 16), (20, 8), [10, -1, 16]) == {2: 8}
    assert followed_shape((10, 16), (10, 1, 16), (10, 8), [10, 1, 16]) == {2: 8}
    # a width split into heads x head size is not guessed
    assert followed_shape((1, 8, 72), (1, 8, 3, 3, 8), (1, 8, 48), [-1, 8, 3, 3, 8]) is None
    assert followed_shape((1, 8, 3, 8), (1, 8, 24), (1, 8, 3, 4), [-1, 8, 24]) is None
    # unchanged input, or a dim the shape infers itself: nothing to write
    assert followed_shape((20, 16), (10, 2, 16), (20, 16), [10, -1, 16]) is None
    assert followed_shape((2, 16), (2, 16), (2, 8), [-1, 0]) is None


@pytest.mark.parametrize("form", ["legacy", "dynamo"])
def test_exported_vit_feed_forward_layers_shrink(form):
    model = corpus_model("vit", form)
    result = run(create("prune.structured", ratio=0.5), model, Context())
    module = result.model.obj
    layers = result.layers
    firsts = [r for r in layers.values() if r["op"] == "Linear" and r["out_channels_before"] == 64]
    seconds = [r for r in layers.values() if r["op"] == "Linear" and r["in_channels_before"] == 64]
    assert len(firsts) == len(seconds) == 2  # one feed-forward pair per encoder layer
    assert all(r["out_channels"] == 32 for r in firsts) and all(r["in_channels"] == 32 for r in seconds)
    # the layers that block the graph (fused qkv projections, the residual width) are named
    left = [n for n, r in layers.items() if "left_out" in r]
    assert left and all(n in next(w for w in result.warnings if "left out of pruning" in w) for n in left[:4])
    qkv = [n for n, r in layers.items() if r["out_channels_before"] == 96]
    assert len(qkv) == 2 and all(n in left for n in qkv)  # heads: see the warning
    assert any("fused q/k/v projection" in w and qkv[0] in w for w in result.warnings)
    before = sum(r["out_channels_before"] * r["in_channels_before"] for r in layers.values() if r["op"] == "Linear")
    after = sum(r["out_channels"] * r["in_channels"] for r in layers.values() if r["op"] == "Linear")
    assert after == before - 2 * (32 * 32 + 32 * 32)
    check_runs(model, result, 10)
    assert params_before_after(result.summary) == (params(module) + 2 * (64 * 32 + 32), params(module))


def test_exported_bert_attention_output_shrinks_through_a_fixed_reshape():
    """torch's default exporter writes MultiheadAttention's output projection as a Gemm on
    [T * B, E] reshaped back to [T, B, 16]; the projection's outputs and the next layer's inputs
    shrink together, and the reshape writes 8 in place of 16."""
    model = corpus_model("tiny_bert", "dynamo")
    result = run(create("prune.structured", ratio=0.5), model, Context())
    module = result.model.obj
    shrunk = {n: r for n, r in result.layers.items() if r["out_channels"] < r["out_channels_before"]}
    assert len(shrunk) == 1
    (name, r), = shrunk.items()
    assert (r["out_channels_before"], r["out_channels"]) == (16, 8)
    narrowed = [n for n, q in result.layers.items() if q["in_channels"] < q["in_channels_before"]]
    assert len(narrowed) == 1 and narrowed[0] != name
    patched = [m.shape_patch for m in module.modules() if getattr(m, "shape_patch", None)]
    assert patched and all(8 in p.values() for p in patched)
    assert "left out of pruning" in " ".join(result.warnings)
    check_runs(model, result, 3)
    before, after = params_before_after(result.summary)
    # 8 of the Gemm's output rows and 8 of the next layer's input columns (the exporter wrote no
    # bias for the projection: torch initialises it to zeros)
    assert after == params(module) == before - 2 * (8 * 16)


@pytest.mark.parametrize("prune_heads", [False, True])
def test_torch_multihead_attention_heads_or_head_dims(prune_heads):
    """nn.MultiheadAttention in a torch model: head dimensions go alike in every head, or (with
    prune_heads, which failed in Torch-Pruning for this layer) one whole head of two goes, its
    rows in q, k and v and its columns of the output projection."""
    import torch

    from studio.core.model import TORCH, Model
    from studio.core.signature import Signature, TensorSpec
    from tests.core.multi_io_models import TinyBert
    from tests.core.test_structured_real_graphs import check_pruned

    torch.manual_seed(0)
    module = TinyBert().eval()
    sig = Signature([TensorSpec("input_ids", "int64", ("batch", 10), value_range=(0, 50)),
                     TensorSpec("attention_mask", "int64", ("batch", 10), value_range=(0, 2))])
    model = Model(module, TORCH, name="tiny_bert", signature=sig)
    example = (torch.randint(0, 50, (1, 10)), torch.ones(1, 10, dtype=torch.long))
    result = run(create("prune.structured", ratio=0.5, prune_heads=prune_heads, round_to=1), model, Context())
    attn = result.model.obj.attn
    assert (attn.embed_dim, attn.num_heads, attn.head_dim) == ((8, 1, 8) if prune_heads else (8, 2, 4))
    assert not hasattr(attn, "out_features")
    if prune_heads:  # the kept rows and columns are one head's block of the original
        w, kept = module.attn.in_proj_weight.detach(), None
        for h in range(2):
            block = torch.arange(8 * h, 8 * h + 8)
            if torch.equal(attn.in_proj_weight[:8], w[block][:, block]):
                kept = block
        assert kept is not None
        assert torch.equal(attn.in_proj_weight[16:], w[32 + kept][:, kept])  # v
        assert torch.equal(attn.out_proj.weight, module.attn.out_proj.weight[kept][:, kept])
    params, _ = check_pruned(model, example, result)
    assert params < 0.5


def test_torch_transformer_encoder_feed_forward_shrinks():
    """The corpus ViT as a torch model (nn.TransformerEncoder): each layer's feed-forward pair
    shrinks; the attention keeps its width, which is the residual width tied to the class token
    and positions (bare parameters), and the warning says so."""
    import torch

    from studio.core.model import TORCH, Model
    from tests.core.test_structured_real_graphs import check_pruned
    from tests.corpus.models import ViT

    torch.manual_seed(0)
    module = ViT().eval()
    model = Model(module, TORCH, (1, 3, 16, 16), name="vit")
    result = run(create("prune.structured", ratio=0.5), model, Context())
    for layer in result.model.obj.encoder.layers:
        assert (layer.linear1.out_features, layer.linear2.in_features) == (32, 32)
        assert layer.self_attn.embed_dim == 32
    assert any("attention layers kept their width" in w for w in result.warnings)
    params, _ = check_pruned(model, (torch.randn(1, 3, 16, 16),), result)
    assert params < 0.8
