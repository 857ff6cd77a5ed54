"""Models of the benchmark that the studio's zoo does not ship: a MobileNetV3-Small-style net
(depthwise convs, HardSwish, squeeze-excite gates with HardSigmoid) and a small BERT-style
encoder exported to ONNX with integer token ids, loaded the way `studio run model.onnx` loads it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        squeeze = max(8, c // 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.act, self.gate = nn.ReLU(), nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, c1, expanded, c2, k, stride, se, hard):
        super().__init__()
        act = nn.Hardswish if hard else nn.ReLU
        layers = []
        if expanded != c1:
            layers += [nn.Conv2d(c1, expanded, 1, bias=False), nn.BatchNorm2d(expanded), act()]
        layers += [nn.Conv2d(expanded, expanded, k, stride, k // 2, groups=expanded, bias=False),
                   nn.BatchNorm2d(expanded), act()]
        if se:
            layers.append(SqueezeExcite(expanded))
        layers += [nn.Conv2d(expanded, c2, 1, bias=False), nn.BatchNorm2d(c2)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c1 == c2

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


# MobileNetV3-Small (Howard et al., 2019, table 2): kernel, expanded, out, SE, hard-swish, stride
SMALL = [(3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
         (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
         (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
         (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1)]


class MobileNetV3Small(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        layers = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()]
        c = 16
        for k, expanded, out, se, hard, stride in SMALL:
            layers.append(InvertedResidual(c, expanded, out, k, stride, se, hard))
            c = out
        layers += [nn.Conv2d(c, 576, 1, bias=False), nn.BatchNorm2d(576), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Linear(1024, classes))

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def randomize_batchnorm(module: nn.Module, seed: int = 0) -> None:
    """Random running statistics and affine terms, as a trained net has: with the defaults
    (mean 0, var 1, weight 1) every batch norm is an identity and INT8 looks better than it is."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def bert_onnx(length: int, folder: Path | None = None):
    """The zoo's small BERT-style classifier (4 layers, width 256, 4 heads) exported to ONNX with
    int64 token ids [batch, length], loaded through the studio's ONNX loader."""
    from studio.core import io
    from studio.core.zoo.archs import BertSmall

    torch.manual_seed(0)
    net = BertSmall(length=length).eval()
    ids = torch.randint(0, 30522, (1, length))
    folder = Path(folder or tempfile.mkdtemp(prefix="bench-bert-"))
    path = folder / "bert-small.onnx"
    torch.onnx.export(net, (ids,), str(path), input_names=["ids"], output_names=["logits"],
                      dynamic_axes={"ids": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False, external_data=False)
    model = io.load(str(path))
    model.name = "bert-small"
    return model
