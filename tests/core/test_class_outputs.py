"""Which output top-1 agreement and accuracy are measured on: the one that is class scores by
evidence (MTCNN R-Net/O-Net return box offsets first, face probabilities last), per position for
[batch, positions, classes] (CTC, token logits), and output fidelity where no output qualifies."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from studio.core.evaluate import Measurement, measure, quality_from_outputs
from studio.core.data import random_inputs
from studio.core import io
from studio.core.convert import run_session_all, session
from tests.core.multi_io_models import export_onnx

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(0)


def softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def judged(outs, refs, labels=None, names=None, vocab=None) -> Measurement:
    m = Measurement()
    quality_from_outputs(m, outs, labels, refs, names, vocab)
    return m


def test_box_regression_first_face_probability_last():
    """R-Net: box [N, 4], probability [N, 2]. The stage's boxes all changed their largest offset,
    its face decisions did not: agreement is the face decision's, 100 %, not the box's 0 %."""
    box, prob = RNG.standard_normal((64, 4)).astype(np.float32), softmax(RNG.standard_normal((64, 2)))
    moved = box.copy()
    moved[np.arange(64), box.argmax(1)] -= 10.0  # every argmax over the 4 offsets moves
    m = judged([moved, prob], [box, prob], names=["boxes", "output_1"])
    assert m.class_output == "output_1" and m.agreement == 1.0 and m.quality_label == "agreement"
    assert "output 'output_1' of 2 (its rows are probability distributions)" in m.quality_means
    # O-Net: box, landmarks, probability
    marks = RNG.standard_normal((64, 10)).astype(np.float32)
    m = judged([box, marks, prob], [box, marks, prob])
    assert m.class_output == "output_2" and m.quality_text == "100.00%"


def test_labels_pick_the_output_whose_width_is_the_label_count():
    box, logits = RNG.standard_normal((40, 4)).astype(np.float32), RNG.standard_normal((40, 2)).astype(np.float32)
    labels = logits.argmax(1)
    labels[:10] = 1 - labels[:10]  # 30 of 40 right
    m = judged([box, logits], [box, logits], labels)
    assert m.class_output == "output_1" and m.accuracy == pytest.approx(0.75)
    assert m.quality_label == "accuracy" and "its width is the label count, 2" in m.quality_means


def test_no_evidence_means_output_fidelity_and_says_why():
    recon, code = RNG.standard_normal((32, 32)).astype(np.float32), RNG.standard_normal((32, 4)).astype(np.float32)
    m = judged([recon, code], [recon, code], names=["recon", "code"])
    assert m.agreement is None and m.quality_label == "cosine" and m.quality_text == "1.0000"
    assert "2 outputs could be class scores ('recon' [32], 'code' [4]), nothing shows which" in m.quality_means
    named = judged([recon, code], [recon, code], names=["logits", "box"])  # a name that says so
    assert named.quality_label == "agreement" and named.class_output == "logits"


def test_a_plain_classifier_is_unchanged():
    scores = RNG.standard_normal((50, 10)).astype(np.float32)
    m = judged([scores], [scores])
    assert m.quality_label == "agreement" and m.agreement == 1.0 and m.class_evidence == "the model's only output"


def test_sequence_class_scores_per_position():
    """CTC: [N, T, C] softmax rows. Top-1 compared position by position: 1 of 8 positions of
    every sample changed -> 87.5 %."""
    ref = softmax(RNG.standard_normal((16, 8, 30)) * 3)
    got = ref.copy()
    got[:, 3] = np.roll(ref[:, 3], 1, axis=-1)
    m = judged([got], [ref])
    assert m.quality_label == "position agreement" and m.agreement == pytest.approx(7 / 8)
    assert m.quality_text == "87.50%" and "compared position by position" in m.quality_means
    # token logits (not softmax) are class scores when their width is an input's vocabulary
    logits = RNG.standard_normal((16, 8, 50)).astype(np.float32)
    assert judged([logits], [logits], vocab={"input_ids": 50}).quality_label == "position agreement"
    labelled = judged([got], [ref], labels=np.zeros(16, np.int64))  # one label per sample: not per position
    assert labelled.quality_label == "position agreement" and labelled.accuracy is None
    assert labelled.quality_means.endswith("the labels (one class per sample) fit no [batch, classes] output, "
                                           "so they are not used")
    hidden = judged([logits], [logits])  # the same shape from an encoder's hidden states: no evidence
    assert hidden.quality_label == "cosine" and "could be class scores per position" in hidden.quality_means


def test_yolo_style_boxes_are_not_class_scores():
    """One [N, boxes, 5 + classes] sigmoid output: argmax over xywh/objectness/classes means nothing."""
    out = (1 / (1 + np.exp(-RNG.standard_normal((8, 20, 8))))).astype(np.float32)
    assert judged([out], [out]).quality_label == "cosine"


class RNetLike(nn.Module):
    """MTCNN R-Net's outputs: box regression [N, 4] first, face probability [N, 2] (softmax) last."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.PReLU(8), nn.MaxPool2d(3, 2), nn.Flatten(), nn.Linear(8 * 4 * 4, 32))
        self.box, self.face = nn.Linear(32, 4), nn.Linear(32, 2)

    def forward(self, x):
        h = self.body(x)
        return self.box(h), torch.softmax(self.face(h), 1)


class CTCHead(nn.Module):
    """A text recognizer's shape: image -> [N, T, classes] softmax per time step."""

    def __init__(self, classes=12):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4, classes)

    def forward(self, x):
        h = torch.relu(self.conv(x))  # [N, 16, 4, 16]
        h = h.permute(0, 3, 1, 2).flatten(2)  # [N, T=16, 64]
        return torch.softmax(self.fc(h), -1)


class TinyLM(nn.Module):
    """A BERT-style masked-LM head: token ids -> token logits [N, T, vocab] (no softmax)."""

    def __init__(self, vocab=40, d=16):
        super().__init__()
        self.emb, self.ff, self.head = nn.Embedding(vocab, d), nn.Linear(d, d), nn.Linear(d, vocab)

    def forward(self, input_ids):
        return self.head(torch.relu(self.ff(self.emb(input_ids))))


@pytest.mark.parametrize("build,example,label,output", [
    (RNetLike, lambda: torch.randn(2, 3, 12, 12), "agreement", 1),
    (CTCHead, lambda: torch.randn(2, 1, 4, 16), "position agreement", 0),
    (TinyLM, lambda: torch.randint(0, 40, (2, 6)), "position agreement", 0)])
def test_measure_on_real_onnx_models(tmp_path, build, example, label, output):
    torch.manual_seed(0)
    path = export_onnx(build(), (example(),), ["x"], {}, tmp_path / "m.onnx", dynamo=False)
    model = io.load(str(path))
    data = random_inputs(model.input_shape, count=128, signature=model.io)
    ref = run_session_all(session(model.obj), data.shaped(data.x_test, model.input_shape))
    m = measure(model, data, ref)
    assert m.quality_label == label and m.quality == 1.0
    assert m.class_output == [o.name for o in model.obj.graph.output][output]


def test_the_stage_table_says_which_output_is_judged(tmp_path):
    """`studio run` on an R-Net-like model: the table's quality is the face probability's
    agreement, its note names the output and why, the box stays in the fidelity table."""
    torch.manual_seed(0)
    path = export_onnx(RNetLike(), (torch.randn(2, 3, 12, 12),), ["x"], {}, tmp_path / "rnet.onnx", dynamo=False)
    r = subprocess.run([sys.executable, "-m", "studio", "run", str(path), "--recipe", str(ROOT / "recipes" / "int8.yaml"),
                        "--data", "random", "--out", str(tmp_path / "out"), "--rounds", "1", "--batches", "1"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    names = [o.name for o in io.load(str(path)).obj.graph.output]
    for stage in report["stages"]:
        m = stage["measurement"]
        assert m["quality_label"] == "agreement" and m["class_output"] == names[1]
        assert len(m["fidelity"]) == 2
    assert f"output '{names[1]}' of 2 (its rows are probability distributions)" in r.stdout
    (export,) = report["exports"]  # ONNX is lossless: every output by max abs diff, the face decision's agreement told
    assert export["verified"] and "top-1 agreement 100.0% (output 1, the class scores) on" in export["message"]
