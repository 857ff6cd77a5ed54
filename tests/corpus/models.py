"""The model corpus: tiny models built in code (random weights, nothing downloaded) with the
shapes real models have. Each entry is a `Case`: the module, example inputs, input names,
dynamic dims beyond the batch, the `--input` settings a user would give, and which forms it is
written in (ONNX through torch's default exporter `dynamo`, through the legacy TorchScript-based
one `legacy`, and a traced TorchScript file `trace` for some)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from tests.core import multi_io_models as mio

FORMS = ("dynamo", "legacy", "trace")


@dataclass
class Case:
    build: object  # () -> nn.Module
    args: tuple  # example inputs, batch 2
    names: list[str]
    dynamic: dict = field(default_factory=dict)  # {input: {axis: label}} beyond the batch
    overrides: list[str] = field(default_factory=list)  # --input NAME:DIMS / NAME=VALUE
    forms: tuple[str, ...] = ("dynamo", "legacy")
    script: bool = False  # legacy export of torch.jit.script(module) (keeps control flow)


# ------------------------------------------------------------------------------ small blocks
def conv_bn(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


def with_stats(module: nn.Module) -> nn.Module:
    """BatchNorm statistics far from 0/1, so folding and pruning change real numbers."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return module.eval()


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """Conv + BatchNorm + pool + Linear (the demo's shape)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(1, 8), nn.MaxPool2d(2), conv_bn(8, 16), nn.MaxPool2d(2))
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.c1, self.c2 = conv_bn(cin, cout, stride=stride), conv_bn(cout, cout, act=nn.Identity)
        self.skip = nn.Identity() if stride == 1 and cin == cout else conv_bn(cin, cout, 1, stride, act=nn.Identity)

    def forward(self, x):
        return torch.relu(self.c2(self.c1(x)) + self.skip(x))


class ResNet(nn.Module):
    """Residual blocks with a strided projection shortcut, global pool, classifier."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.blocks = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, 2))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


class UNet(nn.Module):
    """Encoder-decoder: strided conv down, nearest upsample, skip concat, transposed conv."""

    def __init__(self):
        super().__init__()
        self.e1, self.e2 = conv_bn(3, 8), conv_bn(8, 16, stride=2)
        self.mid = conv_bn(16, 16)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.d1 = conv_bn(32, 8)
        self.tconv = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a = self.e1(x)
        b = self.mid(self.e2(a))
        u = self.d1(torch.cat([self.up(b), a.repeat(1, 2, 1, 1)[:, :16]], 1))
        return self.out(F.avg_pool2d(self.tconv(u), 2))


class FPN(nn.Module):
    """Two scales merged by bilinear upsampling and addition (feature pyramid)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = conv_bn(3, 16, stride=2), conv_bn(16, 32, stride=2)
        self.l1, self.l2 = nn.Conv2d(16, 16, 1), nn.Conv2d(32, 16, 1)
        self.head = nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x):
        f1 = self.c1(x)
        f2 = self.c2(f1)
        p = self.l1(f1) + F.interpolate(self.l2(f2), size=f1.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(p)


class YoloHead(nn.Module):
    """Two detection scales decoded YOLO-style: sigmoid, grid offsets, anchors, one
    [batch, boxes, 5 + classes] output made by concatenation."""

    def __init__(self, classes=3, anchors=2):
        super().__init__()
        self.no, self.na = 5 + classes, anchors
        self.b1, self.b2 = conv_bn(3, 16, stride=2, act=nn.SiLU), conv_bn(16, 32, stride=2, act=nn.SiLU)
        self.h1, self.h2 = nn.Conv2d(16, anchors * self.no, 1), nn.Conv2d(32, anchors * self.no, 1)
        self.register_buffer("anchor", torch.tensor([[10.0, 13.0], [16.0, 30.0]]))

    def decode(self, p, stride):
        n, _, h, w = p.shape
        p = p.view(n, self.na, self.no, h, w).permute(0, 1, 3, 4, 2).sigmoid()
        ys, xs = torch.meshgrid(torch.arange(h, dtype=p.dtype), torch.arange(w, dtype=p.dtype), indexing="ij")
        grid = torch.stack((xs, ys), -1).view(1, 1, h, w, 2)
        xy = (p[..., :2] * 2 - 0.5 + grid) * stride
        wh = (p[..., 2:4] * 2) ** 2 * self.anchor.view(1, self.na, 1, 1, 2)
        return torch.cat((xy, wh, p[..., 4:]), -1).view(n, -1, self.no)

    def forward(self, x):
        f1 = self.b1(x)
        f2 = self.b2(f1)
        return torch.cat([self.decode(self.h1(f1), 2), self.decode(self.h2(f2), 4)], 1)


def silu_conv(cin, cout, k=1, stride=1):
    return conv_bn(cin, cout, k, stride, act=nn.SiLU)


class Bottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1, self.cv2 = silu_conv(c, c, 3), silu_conv(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's block: a 1x1 conv split in two halves, bottlenecks on the second, every piece
    concatenated and mixed by a 1x1 conv."""

    def __init__(self, cin, cout, n=1):
        super().__init__()
        self.c = cout // 2
        self.cv1, self.cv2 = silu_conv(cin, 2 * self.c), silu_conv((2 + n) * self.c, cout)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max pools concatenated."""

    def __init__(self, cin, cout):
        super().__init__()
        self.cv1, self.cv2 = silu_conv(cin, cin // 2), silu_conv(cin // 2 * 4, cout)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.pool(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class YoloV8(nn.Module):
    """YOLOv8n's structure at toy size (input 32x32): C2f backbone, SPPF, an upsample-and-concat
    neck, a decoupled head per scale (box distribution + class convs), DFL (softmax over bins
    times a fixed arange conv), anchors and strides, one [batch, 4 + classes, anchors] output
    from a concat over the scales, like ultralytics' export ([1, 84, 8400] at 640)."""

    def __init__(self, classes=3, reg_max=4, size=32):
        super().__init__()
        self.nc, self.reg = classes, reg_max
        self.stem, self.c1 = silu_conv(3, 8, 3, 2), C2f(8, 8)
        self.down2, self.c2 = silu_conv(8, 16, 3, 2), C2f(16, 16)
        self.down3, self.c3, self.sppf = silu_conv(16, 32, 3, 2), C2f(32, 32), SPPF(32, 32)
        self.up, self.neck = nn.Upsample(scale_factor=2, mode="nearest"), C2f(48, 16)
        self.box = nn.ModuleList(nn.Sequential(silu_conv(c, 16, 3), nn.Conv2d(16, 4 * reg_max, 1)) for c in (16, 32))
        self.cls = nn.ModuleList(nn.Sequential(silu_conv(c, 16, 3), nn.Conv2d(16, classes, 1)) for c in (16, 32))
        self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.dfl.weight.copy_(torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1))
        points, strides = [], []
        for stride in (4, 8):
            n = size // stride
            ys, xs = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
            points.append(torch.stack((xs, ys), -1).view(-1, 2))
            strides.append(torch.full((n * n, 1), float(stride)))
        self.register_buffer("anchors", torch.cat(points).t().unsqueeze(0))  # [1, 2, anchors]
        self.register_buffer("strides", torch.cat(strides).t().unsqueeze(0))  # [1, 1, anchors]

    def forward(self, x):
        p3 = self.c2(self.down2(self.c1(self.stem(x))))
        p4 = self.sppf(self.c3(self.down3(p3)))
        n3 = self.neck(torch.cat([self.up(p4), p3], 1))
        b = x.shape[0]
        feats = [torch.cat([self.box[i](f), self.cls[i](f)], 1).view(b, 4 * self.reg + self.nc, -1)
                 for i, f in enumerate((n3, p4))]
        box, cls = torch.cat(feats, 2).split((4 * self.reg, self.nc), 1)
        a = box.shape[-1]
        dist = self.dfl(box.view(b, 4, self.reg, a).transpose(2, 1).softmax(1)).view(b, 4, a)
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = self.anchors - lt, self.anchors + rb
        xywh = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        return torch.cat((xywh, cls.sigmoid()), 1)


class SSDHead(nn.Module):
    """Boxes and class scores as two outputs, plus the best class per box (an integer output)."""

    def __init__(self, classes=4):
        super().__init__()
        self.body = nn.Sequential(conv_bn(3, 16, stride=2), conv_bn(16, 16))
        self.loc, self.conf = nn.Conv2d(16, 4, 3, padding=1), nn.Conv2d(16, classes, 3, padding=1)
        self.classes = classes

    def forward(self, x):
        h = self.body(x)
        boxes = self.loc(h).flatten(2).transpose(1, 2)
        scores = torch.softmax(self.conf(h).flatten(2).transpose(1, 2), -1)
        return boxes, scores, scores.argmax(-1)


class SE(nn.Module):
    def __init__(self, c, r=4, gate=nn.Hardsigmoid):
        super().__init__()
        self.fc1, self.fc2, self.gate = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1), gate()

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(torch.relu(self.fc1(s))))


class MobileNetV3(nn.Module):
    """Inverted residuals: expand 1x1, depthwise 3x3, squeeze-excite, project; hardswish."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, stride=2, act=nn.Hardswish)
        self.expand = conv_bn(16, 48, 1, act=nn.Hardswish)
        self.dw = conv_bn(48, 48, 3, groups=48, act=nn.Hardswish)
        self.se = SE(48)
        self.project = conv_bn(48, 16, 1, act=nn.Identity)
        self.head = nn.Sequential(nn.Linear(16, 32), nn.Hardswish(), nn.Linear(32, 10))

    def forward(self, x):
        h = self.stem(x)
        h = h + self.project(self.se(self.dw(self.expand(h))))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


class EfficientNet(nn.Module):
    """MBConv with SiLU, sigmoid SE and a strided depthwise conv, then a 1x1 head."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, stride=2, act=nn.SiLU)
        self.mb1 = nn.Sequential(conv_bn(16, 16, 3, groups=16, act=nn.SiLU), SE(16, 4, nn.Sigmoid),
                                 conv_bn(16, 16, 1, act=nn.Identity))
        self.mb2 = nn.Sequential(conv_bn(16, 64, 1, act=nn.SiLU), conv_bn(64, 64, 5, 2, groups=64, act=nn.SiLU),
                                 SE(64, 4, nn.Sigmoid), conv_bn(64, 24, 1, act=nn.Identity))
        self.head = conv_bn(24, 64, 1, act=nn.SiLU)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.mb1(h)
        h = self.head(self.mb2(h))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class ViT(nn.Module):
    """Patch embedding conv, class token, learned positions, two pre-norm encoder layers."""

    def __init__(self, d=32):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 17, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        # TransformerEncoder deep-copies one layer: equal weights, which both exporters store once
        # (one shared weight). A trained ViT's layers differ, so each gets its own initial weights.
        self.encoder.layers[1] = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, activation="gelu", batch_first=True,
                                                            norm_first=True)
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.norm(self.encoder(t))[:, 0])


class Attention(nn.Module):
    """Hand-written scaled dot-product self-attention over a float sequence [batch, 8, 24]."""

    def __init__(self, d=24, heads=3):
        super().__init__()
        self.h, self.qkv, self.proj = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.norm, self.out = nn.LayerNorm(d), nn.Linear(d, 5)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / (d // self.h) ** 0.5, -1) @ v
        x = self.norm(x + self.proj(a.transpose(1, 2).reshape(n, t, d)))
        return self.out(x.mean(1))


class LSTMNet(nn.Module):
    """Two-layer LSTM over [batch, 12, 10] features, last step classified."""

    def __init__(self):
        super().__init__()
        self.rnn, self.fc = nn.LSTM(10, 32, num_layers=2, batch_first=True), nn.Linear(32, 4)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class GRUNet(nn.Module):
    """Bidirectional GRU tagger: a score per time step (sequence output)."""

    def __init__(self):
        super().__init__()
        self.rnn, self.fc = nn.GRU(8, 16, batch_first=True, bidirectional=True), nn.Linear(32, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out)


class Gate(nn.Module):
    """Data-dependent control flow: an If node in both exporters (torch.cond for dynamo,
    torch.jit.script for legacy)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(16, 32), nn.Linear(16, 32), nn.Linear(32, 6)

    def forward(self, x):
        if torch.jit.is_scripting():
            h = self.a(x) if bool(x.mean() > 0) else self.b(x)
        else:
            h = self.cond(x)
        return self.head(torch.relu(h))

    @torch.jit.unused
    def cond(self, x):
        return torch.cond(x.mean() > 0, lambda t: self.a(t), lambda t: self.b(t), (x,))


class VadState(nn.Module):
    """Like Silero VAD: an audio chunk [batch, 64], a recurrent state [2, batch, 16] whose batch is
    axis 1 (LSTM h and c), a scalar sample rate choosing the encoder inside an If node; speech
    probability and the next state [2, batch, 16]."""

    def __init__(self):
        super().__init__()
        self.enc16, self.enc8 = nn.Linear(64, 16), nn.Linear(64, 16)
        self.rnn, self.out = nn.LSTMCell(16, 16), nn.Linear(16, 1)

    def forward(self, audio, state, sr):
        if torch.jit.is_scripting():
            h = self.enc16(audio) if bool(sr == 16000) else self.enc8(audio)
        else:
            h = self.cond(audio, sr)
        hx, cx = self.rnn(torch.relu(h), (state[0], state[1]))
        return torch.sigmoid(self.out(hx)), torch.stack([hx, cx])

    @torch.jit.unused
    def cond(self, audio, sr):
        return torch.cond(sr == 16000, lambda t: self.enc16(t), lambda t: self.enc8(t), (audio,))


class StateCell(nn.Module):
    """VadState without the If: the state [2, batch, 16] (batch on axis 1) through an LSTM cell
    that converts to torch, so the torch passes feed and gather the state along axis 1 too."""

    def __init__(self):
        super().__init__()
        self.enc, self.rnn, self.out = nn.Linear(64, 16), nn.LSTMCell(16, 16), nn.Linear(16, 3)

    def forward(self, audio, state):
        hx, cx = self.rnn(torch.relu(self.enc(audio)), (state[0], state[1]))
        return self.out(hx), torch.stack([hx, cx])


class Conv1dNet(nn.Module):
    """Audio-style Conv1d stack with GroupNorm and a dilated conv, global pool."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv1d(1, 16, 9, stride=4, padding=4), nn.GroupNorm(4, 16)
        self.c2 = nn.Conv1d(16, 16, 3, padding=2, dilation=2)
        self.fc = nn.Linear(16, 6)

    def forward(self, x):
        h = F.gelu(self.n1(self.c1(x)))
        h = h + torch.relu(self.c2(h))
        return self.fc(h.mean(-1))


class Recommender(nn.Module):
    """Two integer inputs (user id, item id) looked up in embedding tables; a dot product and
    an MLP score: a click probability."""

    def __init__(self):
        super().__init__()
        self.users, self.items = nn.Embedding(40, 16), nn.Embedding(60, 16)
        self.mlp = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, user, item):
        u, i = self.users(user), self.items(item)
        return torch.sigmoid(self.mlp(torch.cat([u, i], -1)) + (u * i).sum(-1, keepdim=True))


class SuperRes(nn.Module):
    """ESPCN-style super-resolution with dynamic height and width: convs and PixelShuffle."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 5, padding=2), nn.Conv2d(16, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x):
        return self.shuffle(self.c3(torch.tanh(self.c2(torch.tanh(self.c1(x))))))


class AutoEncoder(nn.Module):
    """Dense autoencoder with two outputs: the reconstruction and the code."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
        self.dec = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 32))

    def forward(self, x):
        code = self.enc(x)
        return self.dec(code), code


class LayerNormFFN(nn.Module):
    """Transformer feed-forward stack on tokens [batch, 6, 32]: LayerNorm, GELU, residual."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
                                    for _ in range(2))
        self.head = nn.Linear(32, 7)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return self.head(x[:, 0])


def _mio(name):
    return mio.cases()[name]


def cases() -> dict[str, Case]:
    """Every corpus model, built fresh with seeded random weights."""
    r = torch.randn
    out: dict[str, Case] = {}

    def add(name, build, args, names=("x",), **kw):
        out[name] = Case(build, args, list(names), **kw)

    def reuse(name, forms=("dynamo", "legacy")):
        module, args, names, dynamic, flags = _mio(name)
        add(name, lambda m=module: m, args, names, dynamic=dynamic,
            overrides=[v for v in flags if v != "--input"], forms=forms)

    torch.manual_seed(0)
    add("mlp", MLP, (r(2, 20),), forms=FORMS)
    add("cnn_bn", lambda: with_stats(CNN()), (r(2, 1, 16, 16),), forms=FORMS)
    add("resnet", lambda: with_stats(ResNet()), (r(2, 3, 16, 16),), forms=FORMS)
    add("unet_concat", lambda: with_stats(UNet()), (r(2, 3, 16, 16),))
    add("fpn_upsample", lambda: with_stats(FPN()), (r(2, 3, 16, 16),))
    add("yolo_head", lambda: with_stats(YoloHead()), (r(2, 3, 16, 16),))
    add("yolov8", lambda: with_stats(YoloV8()), (r(2, 3, 32, 32),), forms=FORMS)
    add("ssd_head", lambda: with_stats(SSDHead()), (r(2, 3, 16, 16),))
    add("mobilenetv3_se", lambda: with_stats(MobileNetV3()), (r(2, 3, 16, 16),), forms=FORMS)
    add("efficientnet_se", lambda: with_stats(EfficientNet()), (r(2, 3, 16, 16),))
    add("vit", ViT, (r(2, 3, 16, 16),))
    add("attention", Attention, (r(2, 8, 24),))
    add("lstm", LSTMNet, (r(2, 12, 10),), forms=FORMS)
    add("gru_bidir", GRUNet, (r(2, 9, 8),))
    add("if_branch", Gate, (r(2, 16),), script=True)
    add("conv1d_audio", Conv1dNet, (r(2, 1, 64),))
    add("recommender", Recommender, (torch.randint(0, 40, (2,)), torch.randint(0, 60, (2,))), ("user", "item"))
    add("superres_dynamic", SuperRes, (r(2, 1, 12, 12),), dynamic={"x": {2: "h", 3: "w"}}, overrides=["x:1,1,12,12"])
    add("autoencoder", AutoEncoder, (r(2, 32),))
    add("ffn_layernorm", LayerNormFFN, (r(2, 6, 32),))
    reuse("two_inputs")
    reuse("tiny_bert", forms=FORMS)
    reuse("three_heads")
    reuse("dict_outputs")
    reuse("dynamic_hw")
    reuse("audio_state")
    # the state's batch is its axis 1 (named like the audio's batch in the file)
    add("vad_state", VadState, (r(2, 64), torch.zeros(2, 2, 16), torch.tensor(16000)), ("audio", "state", "sr"),
        dynamic={"state": {1: "batch"}}, overrides=["sr=16000"], script=True)
    # batch 3: a trace at batch 2 could not tell the state's batch axis from its 2 layers
    add("state_cell", StateCell, (r(3, 64), torch.zeros(2, 3, 16)), ("audio", "state"), dynamic={"state": {1: "batch"}},
        forms=FORMS)
    return out


def write(case: Case, form: str, path) -> None:
    """The case's model written in `form` to `path` (the module is built fresh, eval mode)."""
    torch.manual_seed(0)
    module = case.build().eval()
    if form == "trace":
        mio.trace(module, case.args, path)
    elif form == "legacy" and case.script:
        import warnings

        axes = {n: mio.batch_axes(case.dynamic.get(n, {})) for n, a in zip(case.names, case.args) if a.dim()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(torch.jit.script(module), case.args, str(path), dynamo=False, input_names=case.names,
                              dynamic_axes=axes)
    else:
        mio.export_onnx(module, case.args, case.names, case.dynamic, path, dynamo=form == "dynamo")
