"""INT8 calibration reports each batch while onnxruntime calibrates (it is one blocking call,
which used to show the same percentage for minutes), with the time left from the measured rate;
a cancel stops it at the next batch and leaves no thread behind."""

import threading

import pytest

from studio.core.convert import to_onnx_model
from studio.core.errors import Cancelled
from studio.core.passes import Context, create


def calibrating() -> bool:
    return any(t.name == "studio-calibration" and t.is_alive() for t in threading.enumerate())


@pytest.fixture(scope="module")
def cnn_onnx(demo_cnn):
    return to_onnx_model(demo_cnn)  # exported once: each test below quantizes it


def test_progress_moves_batch_by_batch_during_calibration(cnn_onnx, digits_data):
    gen = create("quantize.int8_static", calibration_samples=256, remedies=False).apply(
        cnn_onnx, Context(data=digits_data))
    seen = []  # (fraction, message, calibration thread running)
    try:
        while True:
            fraction, message = next(gen)
            seen.append((fraction, message, calibrating()))
    except StopIteration as stop:
        result = stop.value
    assert "256 samples" in result.summary
    batches = [(f, m, alive) for f, m, alive in seen if m.startswith("calibrating: batch")]
    assert [m.split()[2] for _, m, _ in batches] == [f"{k}/8" for k in range(1, 9)]  # 256 samples, 32 a batch
    assert all(alive for *_, alive in batches)  # reported while onnxruntime was still calibrating
    fractions = [f for f, _, _ in batches]
    assert fractions == sorted(fractions) and len(set(fractions)) == 8  # the bar moves at every batch
    assert all("left" in m for _, m, _ in batches[1:])  # time left once a batch was timed
    after = [m for _, m, _ in seen[seen.index(batches[-1]) + 1:]]
    assert after[0].startswith("calibrated on 8 batches") and after[-1] == result.summary
    assert seen[-1][0] == 1.0 and not calibrating()


def test_cancel_during_calibration_stops_at_the_next_batch(cnn_onnx, digits_data):
    context = Context(data=digits_data)
    gen = create("quantize.int8_static", calibration_samples=256, remedies=False).apply(cnn_onnx, context)
    reports = 0
    with pytest.raises(Cancelled):
        while True:
            _, message = next(gen)
            if message.startswith("calibrating: batch"):
                reports += 1
                if reports == 3:
                    context.cancel_event.set()
    assert reports == 3 or reports == 4  # one batch may be under way when the cancel comes
    assert not calibrating()
