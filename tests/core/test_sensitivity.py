import json
import time

import numpy as np
import pytest

from studio.core.data import Data
from studio.core.errors import Cancelled, StudioError
from studio.core.passes.base import Context
from studio.core.passes.registry import create
from studio.core.sensitivity import SensitivityResult, prune_sensitivity, quant_sensitivity, sensitive_layers
from studio.core.training import drain
from tests.core.test_pass_common import resnet_model, run, same_state, state


def test_magnitude_sensitivity_cnn_is_fast_and_monotone_enough(demo_cnn, digits_data):
    before = state(demo_cnn)
    start = time.perf_counter()
    result = drain(prune_sensitivity(demo_cnn, digits_data))
    assert time.perf_counter() - start < 20
    assert same_state(before, state(demo_cnn))
    assert result.layers == ["conv1", "conv2", "fc1", "fc2"]
    assert result.quality.shape == (4, 4) and result.metric == "accuracy"
    assert result.baseline > 0.95
    # pruning one layer at 90 % hurts more than at 30 %, for every layer
    assert (result.quality[:, -1] <= result.quality[:, 0] + 1e-9).all()
    # conv1 (288 weights feeding everything) is the sensitive one at 90 %, fc1 (131k) is not
    assert result.quality[0, -1] < result.quality[2, -1]
    # the pass run on its own agrees with the table: prune fc1 alone at 70 %
    pruned = run(create("prune.magnitude", sparsity=0.7, scope="per_layer", targets=["fc1"]), demo_cnn, Context()).model
    x = digits_data.shaped(digits_data.x_test, demo_cnn.input_shape)
    from studio.core.convert import predict

    assert (predict(pruned, x).argmax(1) == digits_data.y_test).mean() == pytest.approx(result.quality[2, 2])


def test_sensitive_layers_and_round_trip(demo_cnn, digits_data):
    result = drain(prune_sensitivity(demo_cnn, digits_data, ratios=(0.5, 0.9)))
    strict = sensitive_layers(result, max_drop=0.06, ratio=0.9)
    loose = sensitive_layers(result, max_drop=0.2, ratio=0.9)
    assert set(loose) <= set(strict) and "conv1" in loose and "fc1" not in strict
    drops = result.baseline - result.quality[:, 1]
    assert strict == [n for n, d in zip(result.layers, drops) if d > 0.06]
    back = SensitivityResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back.layers == result.layers and np.array_equal(back.quality, result.quality)
    assert back.baseline == result.baseline and back.kind == "prune"
    # the ignore list goes into a recipe and the pass honours it
    kept = run(create("prune.magnitude", sparsity=0.9, ignore=strict), demo_cnn, Context())
    assert not set(strict) & set(kept.layers)


def test_structured_sensitivity_resnet_subset(digits_data):
    model = resnet_model()
    result = drain(prune_sensitivity(model, digits_data, layers=["layers.0.conv1", "layers.2.conv1"],
                                     ratios=(0.25, 0.75), method="structured"))
    assert result.quality.shape == (2, 2) and result.method == "structured"
    assert (result.quality <= result.baseline + 0.02).all()


def test_unlabelled_uses_agreement(demo_cnn, digits_data):
    data = Data("unlabelled", digits_data.x_train, digits_data.x_test)
    result = drain(prune_sensitivity(demo_cnn, data, layers=["conv1"], ratios=(0.0, 0.9)))
    assert result.metric == "agreement" and result.baseline == 1.0 and result.quality[0, 0] == 1.0


def test_quant_sensitivity_cnn(demo_cnn, digits_data):
    start = time.perf_counter()
    result = drain(quant_sensitivity(demo_cnn, digits_data, calibration_samples=64))
    assert time.perf_counter() - start < 20
    assert result.kind == "quant" and result.layers == ["/conv1/Conv", "/conv2/Conv", "/fc1/Gemm", "/fc2/Gemm"]
    assert result.quality.shape == (4, 1)
    assert abs(result.baseline - result.reference) < 0.03  # INT8 costs little on this net
    everything = sensitive_layers(result, max_drop=-1.0)  # any layer counts
    assert everything == result.layers
    # the one-click flow: the sensitive layers become the ignore list and stay float
    ignore = everything[:1]
    kept = run(create("quantize.int8_static", calibration_samples=64, ignore=ignore), demo_cnn,
               Context(data=digits_data))
    assert ignore[0] not in kept.layers and len(kept.layers) == 3
    assert SensitivityResult.from_dict(result.to_dict()).kind == "quant"


def test_errors_and_cancel(demo_cnn, digits_data):
    with pytest.raises(StudioError, match="no such layers"):
        drain(prune_sensitivity(demo_cnn, digits_data, layers=["nope"]))
    with pytest.raises(StudioError, match="unknown sensitivity method"):
        drain(prune_sensitivity(demo_cnn, digits_data, method="x"))

    def cancel():
        raise Cancelled()

    before = state(demo_cnn)
    with pytest.raises(Cancelled):
        drain(prune_sensitivity(demo_cnn, digits_data, cancel=cancel))
    assert same_state(before, state(demo_cnn))


def test_int8_sensitivity_on_a_quantized_stage_says_what_to_do():
    """It failed with onnxruntime's 'two nodes with same node name' and no hint."""
    from studio.core import pipeline, sensitivity, zoo
    from studio.core.training import drain
    from studio.core.data import digits
    from studio.core.errors import StudioError
    from studio.core.recipe import Recipe, RecipeStep

    data = digits()
    run = drain(pipeline.run(zoo.load("mlp"), Recipe([RecipeStep("quantize.int8_static", {})]), data,
                             measure_stages=False))
    with pytest.raises(StudioError, match="already quantized.*float stage"):
        drain(sensitivity.quant_sensitivity(run.stages[1].model, data))


def test_sensitivity_judges_the_output_the_table_judges(tmp_path):
    """MTCNN R-Net-like (box offsets first, face probability last): agreement of the face
    decision, as in the stage table; an autoencoder's two outputs: cosine, shown as a similarity."""
    import torch

    from studio.core import io
    from studio.core.data import random_inputs
    from studio.core.evaluate import Measurement, quality_from_outputs
    from tests.core.multi_io_models import export_onnx
    from tests.core.test_class_outputs import RNetLike
    from tests.corpus.models import AutoEncoder

    torch.manual_seed(0)
    for build, example, metric in [(RNetLike, torch.randn(2, 3, 12, 12), "agreement"), (AutoEncoder, torch.randn(2, 32), "cosine")]:
        path = export_onnx(build(), (example,), ["x"], {}, tmp_path / f"{build.__name__}.onnx", dynamo=False)
        model = io.load(str(path))
        data = random_inputs(model.input_shape, count=64, signature=model.io)
        result = drain(prune_sensitivity(model, data, ratios=(0.9,)))
        assert result.metric == metric and result.baseline == pytest.approx(1.0)
        if metric == "agreement":  # the number is the face decision's: what the table shows for that stage
            from studio.core.convert import predict_all

            pruned = run(create("prune.magnitude", sparsity=0.9, scope="per_layer", targets=[result.layers[0]]),
                         model, Context()).model
            x = data.shaped(data.x_test, model.input_shape)
            m = Measurement()
            quality_from_outputs(m, predict_all(pruned, x), None, predict_all(model, x))
            assert m.class_output == "output_1" and result.quality[0, 0] == pytest.approx(m.agreement)
