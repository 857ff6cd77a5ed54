"""Shared helpers for the pass tests (no tests here): tiny real models, drain, ONNX check."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from studio.core.model import TORCH, Model


class TinyTransformer(nn.Module):
    """A transformer-block classifier: 8 tokens of 16 features -> encoder layer -> mean -> 10."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.embed = nn.Linear(16, dim)
        self.block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        # eval-mode attention takes torch's fused fast path, which the TorchScript ONNX exporter
        # cannot export (the studio then falls back to the 5 s dynamo exporter): keep it off here
        enabled = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return self.head(self.block(self.embed(x)).mean(1))
        finally:
            torch.backends.mha.set_fastpath_enabled(enabled)


def transformer_model() -> Model:
    torch.manual_seed(0)
    return Model(TinyTransformer().eval(), TORCH, (1, 8, 16), name="tiny-transformer")


def resnet_model() -> Model:
    from studio.core import zoo

    return zoo.load("resnet")


def state(model: Model) -> dict:
    return {k: v.detach().clone() for k, v in model.obj.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def run(pass_, model, context):
    from studio.core.training import drain

    return drain(pass_.apply(model, context))


def assert_cancel_leaves_input(pass_, model: Model, context, after_yields: int = 0) -> None:
    """Cancel after `after_yields` progress steps (0: before the first): the pass raises
    Cancelled at its next step and the input model's weights are exactly as they were."""
    import pytest

    from studio.core.errors import Cancelled

    before = state(model)
    gen = pass_.apply(model, context)
    for _ in range(after_yields):
        next(gen)
    context.cancel_event.set()
    with pytest.raises(Cancelled):
        for _ in gen:
            pass
    assert same_state(before, state(model))


def onnx_matches(model: Model, atol=1e-4, batch=5) -> float:
    """Export the torch model, run it in onnxruntime, return max |ort - torch|."""
    from studio.core.convert import predict, session, to_onnx_proto
    from studio.core.convert import run_session

    x = model.example_input(batch)
    proto = to_onnx_proto(model)
    ort_out = run_session(session(proto), x)
    torch_out = predict(model, x)
    diff = float(np.abs(ort_out - torch_out).max())
    assert diff < atol, diff
    return diff
