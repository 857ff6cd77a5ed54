"""`summary()` (what `studio inspect` prints) on real files of every format, with and without a
known input shape, and the command line's JSON and its one-line refusals."""

import json
import subprocess
import sys

import onnx
import pytest
import torch
from torch import nn

from studio.core import io
from studio.core.convert import to_onnx_proto
from studio.core.inspect import summary
from studio.core.model import Model

NODE_KEYS = {"name", "op", "parameters", "output_shape", "dtype", "sparsity", "macs"}
TOP_KEYS = {"format", "name", "framework", "input_shape", "parameters", "nonzeros", "macs", "nodes"}


def test_summary_of_a_torch_model_is_plain_json(demo_cnn):
    info = summary(demo_cnn)
    assert TOP_KEYS <= info.keys()
    assert json.loads(json.dumps(info)) == info  # plain data only: the CLI and the window print it
    assert (info["framework"], info["input_shape"]) == ("torch", [1, 1, 8, 8])
    assert (info["parameters"], info["nonzeros"], info["macs"]) == (151_306, 151_306, 1_330_432)
    for node in info["nodes"]:
        assert NODE_KEYS <= node.keys()
    layers = {n["name"]: n for n in info["nodes"] if n["parameters"]}
    assert list(layers) == ["conv1", "conv2", "fc1", "fc2"]
    assert layers["conv2"] == {**layers["conv2"], "op": "Conv2d", "parameters": 18_496,
                               "output_shape": [1, 64, 8, 8], "dtype": "float32", "macs": 64 * 64 * 288}
    assert sum(n["parameters"] for n in info["nodes"]) == info["parameters"]


@pytest.mark.parametrize("form", ["onnx", "torchscript", "torch.export"])
def test_summary_of_each_file_format(tmp_path, demo_cnn, form):
    example = torch.zeros(demo_cnn.input_shape)
    path = tmp_path / {"onnx": "m.onnx", "torchscript": "m.pt", "torch.export": "m.pt2"}[form]
    if form == "onnx":
        onnx.save_model(to_onnx_proto(demo_cnn), str(path))
    elif form == "torchscript":
        torch.jit.save(torch.jit.trace(demo_cnn.obj, example), str(path))
    else:
        torch.export.save(torch.export.export(demo_cnn.obj, (example,)), str(path))
    info = summary(io.load(path))
    assert info["format"] == form and info["name"] == "m"
    assert info["parameters"] == 151_306
    if form == "torchscript":  # a traced file records the shapes it was traced with: no --input-shape
        assert info["signature"]["inputs"][0]["shape"] == ["batch", 1, 8, 8]
    assert info["input_shape"] == [1, 1, 8, 8]
    assert info["macs"] == 1_330_432
    weighted = [n for n in info["nodes"] if n["parameters"]]
    assert len(weighted) == 4 and all(n["output_shape"] for n in weighted)


class TokenNet(nn.Module):
    """Token ids in, like BERT: an embedding, then a classifier."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 8)
        self.fc = nn.Linear(4 * 8, 2)

    def forward(self, ids):
        return self.fc(self.emb(ids).flatten(1))


@pytest.mark.parametrize("form", ["onnx", "torch.export"])
def test_integer_inputs_are_known_from_the_file(tmp_path, form):
    net = TokenNet().eval()
    ids = torch.randint(0, 100, (1, 4))
    path = tmp_path / ("tok.onnx" if form == "onnx" else "tok.pt2")
    if form == "onnx":
        model = Model(net, "torch", (1, 4), meta={"input_dtype": "int64"})
        onnx.save_model(to_onnx_proto(model), str(path))
    else:
        torch.export.save(torch.export.export(net, (ids,)), str(path))
    loaded = io.load(path)
    assert loaded.input_shape == (1, 4) and loaded.meta["input_dtype"] == "int64"
    info = summary(loaded)
    assert info["parameters"] == 100 * 8 + 32 * 2 + 2
    assert info["macs"] == 32 * 2  # the classifier; an embedding is a lookup
    assert all(n["output_shape"] for n in info["nodes"] if n["parameters"])


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "studio", "inspect", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_json_and_one_line_refusals(tmp_path, demo_mlp):
    path = tmp_path / "mlp.onnx"
    onnx.save_model(to_onnx_proto(demo_mlp), str(path))
    ok = run_cli(path, "--json")
    assert ok.returncode == 0, ok.stderr
    info = json.loads(ok.stdout)
    assert info["format"] == "onnx" and info["parameters"] == 50_610  # 64*300+300 + 300*100+100 + 100*10+10
    hostile = tmp_path / "evil.pt"
    hostile.write_bytes(b"\x80\x04\x95" + bytes(64))  # a broken pickle stream
    for bad in (hostile, tmp_path / "missing.onnx", tmp_path):
        result = run_cli(bad, "--json")
        assert result.returncode != 0
        assert result.stdout == ""
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


class ImageAndTokens(nn.Module):
    """An image of free height and width, and a feature sequence of free length."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(8, 16)

    def forward(self, x, z):
        return self.conv(x), self.fc(z)


def test_inspect_says_which_dynamic_dims_it_counted_as_one(tmp_path):
    """PP-OCR det showed 4M MACs (560M at 320x320) with no word that its height and width were
    taken as 1. Now one line names the dims and the --input that sizes them, and --input sizes
    every input's MACs, not only the first one's."""
    from tests.core.multi_io_models import export_onnx

    path = export_onnx(ImageAndTokens(), (torch.randn(2, 3, 8, 8), torch.randn(2, 5, 8)), ["x", "z"],
                       {"x": {2: "h", 3: "w"}, "z": {1: "seq"}}, tmp_path / "m.onnx", dynamo=False)

    def inspect(*flags):
        r = subprocess.run([sys.executable, "-m", "studio", "inspect", str(path), *flags],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = inspect()
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert notes == ["note: MACs and output shapes are counted with 'x' as [1, 3, 1, 1] (dynamic dims 2, 3 taken as 1), "
                     "'z' as [1, 1, 8] (dynamic dim 1 taken as 1): give the size you run at with --input x:1,3,H,W "
                     "--input z:1,SEQ,8 (numbers)"]
    conv, fc = 4 * 27, 16 * 8  # MACs per output position
    assert f"MACs {conv + fc:,}" in out
    model = io.load(str(path))
    assert summary(model)["macs_note"] == notes[0][len("note: "):]
    sized = model.with_signature(model.io.with_overrides(["x:1,3,20,10", "z:1,7,8"]))  # what --input does
    info = summary(sized)
    assert info["macs"] == conv * 200 + fc * 7 and info["macs_note"] == ""
