import numpy as np
import pytest

from studio.core.convert import predict, to_onnx_model
from studio.core.data import Data
from studio.core.errors import StudioError
from studio.core.passes.base import Context
from studio.core.passes.registry import create
from tests.core.test_pass_common import assert_cancel_leaves_input, onnx_matches, run, same_state, state, transformer_model


def params(module):
    return sum(p.numel() for p in module.parameters())


def accuracy(model, data):
    x = data.shaped(data.x_test, model.input_shape)
    return float((predict(model, x).argmax(1) == data.y_test).mean())


def test_narrow_student_learns_from_teacher(demo_cnn, digits_data):
    before = state(demo_cnn)
    result = run(create("distill.kd", width=0.5, epochs=2), demo_cnn, Context(data=digits_data))
    assert same_state(before, state(demo_cnn))
    student = result.model.obj
    assert student.conv1.out_channels == 16 and student.fc2.out_features == 10
    assert params(student) < 0.3 * params(demo_cnn.obj)
    assert accuracy(result.model, digits_data) > 0.9
    onnx_matches(result.model)


def test_unlabelled_data_uses_soft_loss_only(demo_mlp, digits_data):
    unlabelled = Data("unlabelled", digits_data.x_train, digits_data.x_test)
    result = run(create("distill.kd", student="class", name="studio.core.zoo.nets:MLP", epochs=3, learning_rate=2e-3),
                 demo_mlp, Context(data=unlabelled))
    assert "soft loss only" in result.summary
    # a fresh MLP trained only on the teacher's outputs agrees with it and classifies the digits
    x = digits_data.shaped(digits_data.x_test, demo_mlp.input_shape)
    agreement = (predict(result.model, x).argmax(1) == predict(demo_mlp, x).argmax(1)).mean()
    assert agreement > 0.85
    assert accuracy(result.model, digits_data) > 0.85


@pytest.mark.slow
def test_zoo_student_and_reinit(demo_cnn, digits_data):
    result = run(create("distill.kd", student="zoo", name="mlp", epochs=1), demo_cnn, Context(data=digits_data))
    assert type(result.model.obj).__name__ == "MLP" and result.model.input_shape == demo_cnn.input_shape
    onnx_matches(result.model)
    fresh = run(create("distill.kd", width=0.5, reinit=True, epochs=1), demo_cnn, Context(data=digits_data))
    assert fresh.model.obj.conv1.out_channels == 16


def test_transformer_student(digits_data):
    teacher = transformer_model()
    rng = np.random.default_rng(0)
    data = Data("random", rng.standard_normal((256, 8, 16)).astype(np.float32),
                rng.standard_normal((64, 8, 16)).astype(np.float32))
    result = run(create("distill.kd", width=0.5, epochs=2), teacher, Context(data=data))
    assert result.model.obj.block.linear1.out_features < 32
    onnx_matches(result.model)


def test_bad_student_names(demo_cnn, digits_data):
    with pytest.raises(StudioError, match="no zoo model"):
        run(create("distill.kd", student="zoo", name="nope"), demo_cnn, Context(data=digits_data))
    with pytest.raises(StudioError, match="package.module:Class"):
        run(create("distill.kd", student="class", name="nocolon"), demo_cnn, Context(data=digits_data))
    with pytest.raises(StudioError, match="outputs"):
        run(create("distill.kd", student="class", name="torch.nn:Identity"), demo_cnn, Context(data=digits_data))


def test_onnx_teacher_and_cancel(demo_cnn, digits_data):
    result = run(create("distill.kd", width=0.5, epochs=1), to_onnx_model(demo_cnn), Context(data=digits_data))
    assert result.model.is_torch and accuracy(result.model, digits_data) > 0.8
    assert_cancel_leaves_input(create("distill.kd", epochs=3), demo_cnn, Context(data=digits_data), after_yields=2)


def test_narrow_residual_student(digits_data):
    """The demo ResNet (residual adds, batch norm) narrowed to half its channels learns from it."""
    from tests.core.test_pass_common import resnet_model

    teacher = resnet_model()
    result = run(create("distill.kd", width=0.5, epochs=2), teacher, Context(data=digits_data))
    assert params(result.model.obj) < 0.35 * params(teacher.obj)
    assert accuracy(result.model, digits_data) > 0.9
    onnx_matches(result.model, atol=1e-3)


def test_training_budget_cuts_epochs_then_samples_and_says_so(demo_cnn, digits_data):
    """max_train_macs bounds the work (the teacher's MACs per sample, 3x per sample and epoch to
    train): the epochs go first, then the samples, and the stage's summary, record and warnings
    say what was trained."""
    from studio.core.passes.distill import DistillConfig, budget
    from studio.core.stats import count_macs

    macs = count_macs(demo_cnn)
    n = len(digits_data.x_train)
    assert budget(DistillConfig(epochs=3), macs, n) == (3, n, None)  # the default binds no small model
    epochs, used, note = budget(DistillConfig(epochs=5, max_train_macs=macs * n * (1 + 3 * 2.5)), macs, n)
    assert (epochs, used) == (2, n) and "trained 2 epochs over" in note
    cap = 4 * macs * 100  # one epoch of 100 samples
    result = run(create("distill.kd", width=0.5, epochs=4, max_train_macs=cap), demo_cnn, Context(data=digits_data))
    assert result.layers["training"] == {"epochs": 1, "samples": 100, "of_samples": n, "budget_bound": True}
    assert "1 epoch over 100 samples (training budget)" in result.summary
    assert any(w.startswith("training budget: 4 epochs over") for w in result.warnings)


def test_building_the_student_moves_the_progress_and_stops_when_cancelled():
    """Narrowing the teacher with Torch-Pruning (about a minute on YOLOv8n) reports each channel
    group between 0.02 and 0.1; a cancel during it stops the pass at its next step, and the
    teacher (a torch model: narrowed from a copy) is exactly as it was."""
    import time

    import torch

    from studio.core.data import random_inputs
    from studio.core.errors import Cancelled
    from studio.core.model import TORCH, Model
    from tests.corpus.models import YoloV8

    torch.manual_seed(0)
    teacher = Model(YoloV8().eval(), TORCH, (1, 3, 32, 32))
    data = random_inputs(teacher.input_shape, count=20)
    building = []
    gen = create("distill.kd", epochs=1).apply(teacher, Context(data=data))
    for fraction, message in gen:
        if building and not message.startswith("building the student"):
            break
        if message.startswith("building the student"):
            building.append((fraction, message))
    gen.close()
    fractions = [f for f, _ in building]
    assert fractions == sorted(fractions) and 0.02 <= fractions[0] and fractions[-1] <= 0.1
    groups = [m for _, m in building if "channel group" in m]
    assert len(groups) >= 5 and len(set(fractions)) >= len(groups), building[:8]

    before = state(teacher)
    context = Context(data=data)
    gen = create("distill.kd", epochs=1).apply(teacher, context)
    for _, message in gen:
        if "channel group 3 " in message:
            break
    context.cancel_event.set()
    start = time.perf_counter()
    with pytest.raises(Cancelled):
        next(gen)  # the very next step
    assert time.perf_counter() - start < 2
    assert same_state(before, state(teacher))
