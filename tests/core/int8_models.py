"""Tiny models whose INT8 quantization is known to be hard (no tests here): a MobileNetV3-style
block (depthwise conv, squeeze-excitation, hardswish) and a ViT-style block (LayerNorm,
softmax attention, GELU), with random weights."""

from __future__ import annotations

import torch
from torch import nn

from studio.core.model import TORCH, Model


class MobileBlockNet(nn.Module):
    """Stem conv + hardswish, an inverted residual (expand, depthwise, SE with hardsigmoid,
    project), pooling and a 10-class head: the parts of MobileNetV3 INT8 finds hard."""

    def __init__(self, ch=16, expand=48):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(ch, expand, 1), nn.BatchNorm2d(expand), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(expand, expand, 3, padding=1, groups=expand), nn.BatchNorm2d(expand),
                                       nn.Hardswish())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(expand, 8, 1), nn.ReLU(), nn.Conv2d(8, expand, 1),
                                nn.Hardsigmoid())
        self.project = nn.Sequential(nn.Conv2d(expand, ch, 1), nn.BatchNorm2d(ch))
        self.head = nn.Linear(ch, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.depthwise(self.expand(x))
        x = x + self.project(y * self.se(y))
        return self.head(x.mean((2, 3)))


class VitBlockNet(nn.Module):
    """Patch embedding, one pre-norm transformer block (LayerNorm, softmax attention written out
    so its MatMuls are plain ops, GELU MLP) and a 10-class head on the mean token."""

    def __init__(self, dim=32, heads=2, tokens=16):
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(12, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.5)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def features(self, x):  # x: [batch, 16 tokens, 12 features]
        x = self.embed(x) + self.pos
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))

    def forward(self, x):
        return self.head(self.norm3(self.features(x)).mean(1))


class VitFeatures(VitBlockNet):
    """The same block giving its token features (not class scores): fidelity, not agreement."""

    def forward(self, x):
        return self.features(x)


def _randomize_norms(module: nn.Module, seed: int) -> None:
    """Random BatchNorm statistics and LayerNorm gains, so the random net has the uneven
    activation ranges trained ones have."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g).abs() + 0.5)
        elif isinstance(m, nn.LayerNorm):
            m.weight.data.copy_(torch.randn(m.normalized_shape, generator=g) * 2)


def mobile_model(seed: int = 0) -> Model:
    torch.manual_seed(seed)
    net = MobileBlockNet()
    _randomize_norms(net, seed)
    return Model(net.eval(), TORCH, (1, 3, 16, 16), name="mobile-block")


def vit_model(seed: int = 0, features: bool = False) -> Model:
    torch.manual_seed(seed)
    net = (VitFeatures if features else VitBlockNet)()
    _randomize_norms(net, seed)
    return Model(net.eval(), TORCH, (1, 16, 12), name="vit-features" if features else "vit-block")
