"""Tiny models with the shapes real models have: several inputs, token ids into an embedding,
several outputs (tuple, dict), dynamic image sizes, a state and a constant setting. Each case is
(module, example args, input names, dynamic dims beyond the batch, CLI --input flags)."""

import torch
from torch import nn


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 16), nn.Linear(4, 16), nn.Linear(16, 5)

    def forward(self, x, z):
        return self.head(torch.relu(self.a(x) + self.b(z)))


class TinyBert(nn.Module):
    """Token ids + attention mask -> embedding, one attention block, class scores."""

    def __init__(self, vocab=50, d=16):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(12, d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.ff, self.cls = nn.Linear(d, d), nn.Linear(d, 3)

    def forward(self, input_ids, attention_mask):
        pos = torch.arange(input_ids.shape[1]).unsqueeze(0)
        h = (self.emb(input_ids) + self.pos(pos)) * attention_mask.unsqueeze(-1).to(torch.float32)
        a, _ = self.attn(h, h, h, need_weights=False)
        h = h + torch.relu(self.ff(a))
        return self.cls(h.mean(1))


class ThreeHeads(nn.Module):
    """Like MTCNN's P-Net: face probability, box regression and landmarks, as a tuple."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.prob, self.box, self.marks = nn.Conv2d(8, 2, 1), nn.Conv2d(8, 4, 1), nn.Conv2d(8, 10, 1)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return torch.softmax(self.prob(h), 1), self.box(h), self.marks(h)


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.f, self.a, self.b = nn.Linear(12, 24), nn.Linear(24, 6), nn.Linear(24, 2)

    def forward(self, x):
        h = torch.relu(self.f(x))
        return {"logits": self.a(h), "box": self.b(h)}


class DynamicConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


class AudioState(nn.Module):
    """Audio chunk + recurrent state + a scalar sample rate (like Silero VAD): speech probability
    and the new state."""

    def __init__(self):
        super().__init__()
        self.enc, self.rnn, self.out = nn.Linear(64, 16), nn.GRUCell(16, 16), nn.Linear(16, 1)

    def forward(self, audio, state, sr):
        h = torch.relu(self.enc(audio * (sr.to(audio.dtype) / 16000.0)))
        new = self.rnn(h, state)
        return torch.sigmoid(self.out(new)), new


def cases():
    torch.manual_seed(0)
    return {
        "two_inputs": (TwoInputs(), (torch.randn(2, 8), torch.randn(2, 4)), ["x", "z"], {}, []),
        "tiny_bert": (TinyBert(), (torch.randint(0, 50, (2, 10)), torch.ones(2, 10, dtype=torch.long)),
                      ["input_ids", "attention_mask"], {}, []),
        "three_heads": (ThreeHeads(), (torch.randn(2, 3, 12, 12),), ["x"], {}, []),
        "dict_outputs": (DictOut(), (torch.randn(2, 12),), ["x"], {}, []),
        "dynamic_hw": (DynamicConv(), (torch.randn(2, 3, 16, 16),), ["x"], {"x": {2: "h", 3: "w"}},
                       ["--input", "x:1,3,20,20"]),
        "audio_state": (AudioState(), (torch.randn(2, 64), torch.zeros(2, 16), torch.tensor(16000)),
                        ["audio", "state", "sr"], {}, ["--input", "sr=16000"]),
    }


def batch_axes(extra: dict) -> dict:
    """An input's dynamic axes: the batch on axis 0 plus `extra`, or only `extra` where it puts
    the batch elsewhere (a state [2, batch, 16])."""
    return dict(extra) if "batch" in extra.values() else {0: "batch", **extra}


def export_onnx(module, args, names, dynamic, path, dynamo: bool):
    """torch.onnx.export with a dynamic batch axis on every batched input (and the extra dynamic
    dims given)."""
    import warnings

    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch")
            shapes = []
            for name, a in zip(names, args):
                if a.dim() == 0:
                    shapes.append(None)
                    continue
                dims = {}
                for axis, label in batch_axes(dynamic.get(name, {})).items():
                    dims[axis] = batch if label == "batch" else torch.export.Dim(label, min=4, max=512)
                shapes.append(dims)
            torch.onnx.export(module, args, str(path), dynamo=True, input_names=names,
                              dynamic_shapes=tuple(shapes), external_data=False, verbose=False)
        else:
            axes = {n: batch_axes(dynamic.get(n, {})) for n, a in zip(names, args) if a.dim() >= 1}
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=names, dynamic_axes=axes)
    return path


def trace(module, args, path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(module.eval(), args, strict=False, check_trace=False), str(path))
    return path
