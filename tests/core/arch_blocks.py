"""Tiny, randomly initialised versions of architectures users bring, written from their papers'
block structure (torchvision/ultralytics/timm/transformers are not installed here, and nothing is
downloaded). Each builder returns (module in eval mode, example_inputs tuple) and is small
enough to prune and export in a second:

- tiny_yolo: YOLOv8 layout: Conv-BN-SiLU, C2f (chunk + concat of bottlenecks), SPPF (max-pool
  concat), FPN/PAN neck (nearest upsample + concat), a Detect head per scale with a DFL box
  decoder and anchors made from the feature sizes; outputs (decoded boxes+scores, [3 raw maps]).
- tiny_vit: patch conv, class token, position embedding, timm-style attention with one fused
  qkv Linear split into heads, MLP blocks, class head on the class token.
- tiny_bert: token + position embeddings, BERT self-attention (separate query/key/value, an
  additive attention mask), intermediate/output dense layers with LayerNorm, pooler, classifier;
  inputs (input_ids, attention_mask).
- tiny_mobilenetv3: inverted residuals with depthwise convs, squeeze-excite (hardsigmoid gate)
  and hardswish.
- tiny_efficientnet: MBConv blocks (depthwise, SiLU, sigmoid squeeze-excite), stride-2 stages.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# ------------------------------------------------------------------------------------ YOLOv8


class ConvBnAct(nn.Module):
    def __init__(self, c1, c2, k=1, s=1, act=nn.SiLU, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut=True):
        super().__init__()
        self.cv1, self.cv2 = ConvBnAct(c, c, 3), ConvBnAct(c, c, 3)
        self.add = shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """As in ultralytics: one conv, chunk in two, each bottleneck feeds the next, concat all."""

    def __init__(self, c1, c2, n=1, shortcut=False):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = ConvBnAct(c1, 2 * self.c, 1)
        self.cv2 = ConvBnAct((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1, self.cv2 = ConvBnAct(c1, c_, 1), ConvBnAct(c_ * 4, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss decoder: a fixed 1x1 conv computing the expected distance."""

    def __init__(self, c1=16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(feats, strides, offset=0.5):
    points, stride_tensor = [], []
    for feat, stride in zip(feats, strides):
        h, w = feat.shape[2:]
        sx = torch.arange(w, dtype=feat.dtype) + offset
        sy = torch.arange(h, dtype=feat.dtype) + offset
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_tensor.append(torch.full((h * w, 1), stride, dtype=feat.dtype))
    return torch.cat(points).transpose(0, 1), torch.cat(stride_tensor).transpose(0, 1)


class Detect(nn.Module):
    def __init__(self, nc=4, ch=(16, 32, 64), reg_max=16, strides=(8, 16, 32)):
        super().__init__()
        self.nc, self.reg_max, self.strides = nc, reg_max, strides
        self.no = nc + 4 * reg_max
        c2, c3 = max(16, ch[0] // 4, 4 * reg_max), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(ConvBnAct(x, c2, 3), ConvBnAct(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1))
                                 for x in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(ConvBnAct(x, c3, 3), ConvBnAct(c3, c3, 3), nn.Conv2d(c3, nc, 1))
                                 for x in ch)
        self.dfl = DFL(reg_max)

    def forward(self, xs):
        x = [torch.cat((self.cv2[i](xs[i]), self.cv3[i](xs[i])), 1) for i in range(len(xs))]
        b = x[0].shape[0]
        x_cat = torch.cat([xi.view(b, self.no, -1) for xi in x], 2)
        anchors, strides = make_anchors(x, self.strides)
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)
        x1y1, x2y2 = anchors.unsqueeze(0) - lt, anchors.unsqueeze(0) + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides
        return torch.cat((dbox, cls.sigmoid()), 1), x


class TinyYolo(nn.Module):
    def __init__(self, nc=4):
        super().__init__()
        self.b0, self.b1, self.b2 = ConvBnAct(3, 8, 3, 2), ConvBnAct(8, 16, 3, 2), C2f(16, 16, 1, True)
        self.b3, self.b4 = ConvBnAct(16, 32, 3, 2), C2f(32, 32, 1, True)  # P3/8
        self.b5, self.b6 = ConvBnAct(32, 64, 3, 2), C2f(64, 64, 1, True)  # P4/16
        self.b7, self.b8, self.b9 = ConvBnAct(64, 64, 3, 2), C2f(64, 64, 1, True), SPPF(64, 64)  # P5/32
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n12 = C2f(64 + 64, 32)
        self.n15 = C2f(32 + 32, 16)  # out P3
        self.n16, self.n18 = ConvBnAct(16, 16, 3, 2), C2f(16 + 32, 32)  # out P4
        self.n19, self.n21 = ConvBnAct(32, 32, 3, 2), C2f(32 + 64, 64)  # out P5
        self.detect = Detect(nc, (16, 32, 64))

    def forward(self, x):
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        h12 = self.n12(torch.cat((self.up(p5), p4), 1))
        o3 = self.n15(torch.cat((self.up(h12), p3), 1))
        o4 = self.n18(torch.cat((self.n16(o3), h12), 1))
        o5 = self.n21(torch.cat((self.n19(o4), p5), 1))
        return self.detect([o3, o4, o5])


def tiny_yolo():
    torch.manual_seed(0)
    return TinyYolo().eval(), (torch.randn(1, 3, 64, 64),)


# ------------------------------------------------------------------------------------ ViT


class Attention(nn.Module):
    """timm's Attention: a fused qkv Linear split into heads; the output keeps the pruned width
    (reshape to -1), as Torch-Pruning's ViT example writes it."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class VitBlock(nn.Module):
    def __init__(self, dim, heads, attention=Attention):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, dim * 2)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyVit(nn.Module):
    def __init__(self, dim=32, heads=4, depth=2, patch=8, image=32, classes=10, attention=Attention):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(VitBlock(dim, heads, attention) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def tiny_vit():
    torch.manual_seed(0)
    return TinyVit().eval(), (torch.randn(1, 3, 32, 32),)


# ------------------------------------------------------------------------------------ BERT


class BertSelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.num_attention_heads = heads
        self.attention_head_size = hidden // heads
        self.all_head_size = hidden
        self.query, self.key, self.value = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)

    def split_heads(self, x):
        b, n, _ = x.shape
        return x.view(b, n, self.num_attention_heads, self.attention_head_size).permute(0, 2, 1, 3)

    def forward(self, h, mask):
        q, k, v = self.split_heads(self.query(h)), self.split_heads(self.key(h)), self.split_heads(self.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.attention_head_size) + mask
        ctx = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.shape[0], ctx.shape[1], self.all_head_size)


class BertLayer(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.attention = BertSelfAttention(hidden, heads)
        self.attn_out, self.attn_norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden)
        self.intermediate, self.output = nn.Linear(hidden, hidden * 4), nn.Linear(hidden * 4, hidden)
        self.out_norm = nn.LayerNorm(hidden)

    def forward(self, h, mask):
        h = self.attn_norm(h + self.attn_out(self.attention(h, mask)))
        return self.out_norm(h + self.output(F.gelu(self.intermediate(h))))


class TinyBert(nn.Module):
    def __init__(self, vocab=64, hidden=32, heads=4, depth=2, max_len=16, classes=3):
        super().__init__()
        self.word_embeddings, self.position_embeddings = nn.Embedding(vocab, hidden), nn.Embedding(max_len, hidden)
        self.emb_norm = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList(BertLayer(hidden, heads) for _ in range(depth))
        self.pooler, self.classifier = nn.Linear(hidden, hidden), nn.Linear(hidden, classes)

    def forward(self, input_ids, attention_mask):
        pos = torch.arange(input_ids.shape[1]).unsqueeze(0)
        h = self.emb_norm(self.word_embeddings(input_ids) + self.position_embeddings(pos))
        mask = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * -10000.0
        for layer in self.layers:
            h = layer(h, mask)
        return self.classifier(torch.tanh(self.pooler(h[:, 0])))


def tiny_bert():
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (1, 12))
    mask = torch.ones(1, 12, dtype=torch.int64)
    mask[:, 9:] = 0
    return TinyBert().eval(), (ids, mask)


# ------------------------------------------------------------------------ MobileNetV3 / EfficientNet


class SqueezeExcite(nn.Module):
    def __init__(self, c, squeeze, act=nn.ReLU, gate=nn.Hardsigmoid):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.act, self.fc2, self.gate = nn.Conv2d(c, squeeze, 1), act(), nn.Conv2d(squeeze, c, 1), gate()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """MobileNetV3's block (EfficientNet's MBConv with other activations): expand 1x1,
    depthwise kxk, optional squeeze-excite, project 1x1, residual when the shape allows."""

    def __init__(self, c1, expanded, c2, k, stride, se, act, se_act=nn.ReLU, gate=nn.Hardsigmoid, se_ratio=0.25):
        super().__init__()
        self.expand = ConvBnAct(c1, expanded, 1, act=act) if expanded != c1 else nn.Identity()
        self.depthwise = ConvBnAct(expanded, expanded, k, stride, act=act, groups=expanded)
        self.se = SqueezeExcite(expanded, max(8, int(expanded * se_ratio)), se_act, gate) if se else nn.Identity()
        self.project = ConvBnAct(expanded, c2, 1, act=None)
        self.residual = stride == 1 and c1 == c2

    def forward(self, x):
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class TinyMobileNetV3(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        hs, re = nn.Hardswish, nn.ReLU
        self.stem = ConvBnAct(3, 16, 3, 2, act=hs)
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 16, 3, 2, True, re),
            InvertedResidual(16, 64, 24, 3, 2, False, re),
            InvertedResidual(24, 72, 24, 3, 1, False, re),
            InvertedResidual(24, 96, 40, 5, 2, True, hs),
            InvertedResidual(40, 120, 40, 5, 1, True, hs),
        )
        self.last = ConvBnAct(40, 96, 1, act=hs)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(96, 128), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(128, classes))

    def forward(self, x):
        return self.classifier(self.pool(self.last(self.blocks(self.stem(x)))).flatten(1))


def tiny_mobilenetv3():
    torch.manual_seed(0)
    return TinyMobileNetV3().eval(), (torch.randn(1, 3, 32, 32),)


class TinyEfficientNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        silu = nn.SiLU

        def mb(c1, expand, c2, k, s):
            return InvertedResidual(c1, c1 * expand, c2, k, s, True, silu, silu, nn.Sigmoid)

        self.stem = ConvBnAct(3, 16, 3, 2)
        self.blocks = nn.Sequential(mb(16, 1, 8, 3, 1), mb(8, 6, 16, 3, 2), mb(16, 6, 16, 3, 1), mb(16, 6, 24, 5, 2))
        self.head = ConvBnAct(24, 64, 1)
        self.pool, self.dropout, self.fc = nn.AdaptiveAvgPool2d(1), nn.Dropout(0.2), nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(self.dropout(self.pool(self.head(self.blocks(self.stem(x)))).flatten(1)))


def tiny_efficientnet():
    torch.manual_seed(0)
    return TinyEfficientNet().eval(), (torch.randn(1, 3, 32, 32),)


BUILDERS = {"yolo": tiny_yolo, "vit": tiny_vit, "bert": tiny_bert, "mobilenetv3": tiny_mobilenetv3,
            "efficientnet": tiny_efficientnet}
