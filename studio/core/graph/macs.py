"""Multiply-accumulates, counted one way for every graph builder (torch modules and fx ops,
TorchScript, ONNX): each element of a layer's output sums `reduced` products, so its MACs are
output elements x reduced. Only the layers that dominate the work are counted (convolutions,
dense layers, attention); element-wise ops count 0. Dense = zeros count too."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dense(out_numel: int, reduced: int) -> int:
    """Linear, Gemm, MatMul: `reduced` is the length of the summed axis (in_features, K)."""
    return int(out_numel) * int(reduced)


def conv(out_numel: int, weight_shape: Sequence[int]) -> int:
    """A convolution whose weight is [C_out, C_in / groups, k...]."""
    return dense(out_numel, int(np.prod(weight_shape[1:])))


def attention(out_numel: int, dim: int) -> int:
    """torch's MultiheadAttention with embedding `dim` whose output holds out_numel elements: the
    four projections (q, k, v, out) and the two token-by-token products (scores, weighted sum)."""
    tokens = out_numel // max(1, dim)
    return tokens * dim * dim * 4 + 2 * tokens * tokens * dim
