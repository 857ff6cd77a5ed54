"""Inference RAM per stage, measured in a fresh child process (studio.core.memory)."""

import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from studio.core import memory, pipeline
from studio.core.stage_table import text as stage_table
from studio.core.recipe import Recipe, RecipeStep
from studio.core.training import drain

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="measured on Linux and macOS only")


def matmul_model(n: int):
    """y = x @ W with W n x n float32: its weights alone take 4 n^2 bytes of RAM."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_ram_grows_with_the_weights_the_model_holds():
    small = memory.inference_ram(matmul_model(64), np.zeros((1, 64), np.float32))
    big = memory.inference_ram(matmul_model(4096), np.zeros((1, 4096), np.float32))  # 64 MiB of weights
    assert small is not None and big is not None
    assert small < 40 * 2**20  # a 16 KiB model: the session's own overhead only
    assert big - small > 60 * 2**20  # the weights are resident (at least once)
    assert big < small + 3 * 64 * 2**20  # and not copied many times over


def test_run_measures_ram_per_stage_and_the_table_shows_it(demo_mlp, digits_data):
    recipe = Recipe([RecipeStep("quantize.int8_static", {"calibration_samples": 32})])
    progress, messages = [], []
    gen = pipeline.run(demo_mlp, recipe, digits_data, latency_batches=(), measure_ram=True)
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            run = stop.value
            break
        progress.append(step.overall)
        messages.append(step.message)
    assert progress == sorted(progress), "the bar went backwards"
    # the original's RAM child runs before the pass builds the INT8 stage (this process then holds the
    # original alone, not every stage beside the child), and only once
    ram_at = messages.index("measuring the original model: RAM, in a fresh process")
    assert ram_at < next(i for i, m in enumerate(messages) if m.startswith("quantize.int8_static"))
    assert [m for m in messages if m.startswith("RAM of stage")] == ["RAM of stage 1, in a fresh process"]
    rams = [s.measurement.ram_bytes for s in run.stages]
    assert all(r is not None and r > 0 for r in rams), rams
    table = stage_table(run)
    assert " RAM" in table.splitlines()[0] and "fresh process" in table
    assert run.stages[1].measurement.as_dict()["ram_bytes"] == rams[1]
    # without the option nothing is measured (the window and the tests stay quick)
    quiet = drain(pipeline.run(demo_mlp, Recipe([]), digits_data, latency_batches=()))
    assert quiet.stages[0].measurement.ram_bytes is None and " RAM" not in stage_table(quiet).splitlines()[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_gives_freed_heap_back_off_the_main_thread_too():
    """The INT8 pass calibrates and quantizes on a helper thread (its progress moves meanwhile):
    the heap its calibrator freed must go back to the system there too, before quantize_static's
    copies of the model come on top of it."""
    import threading

    rss = memory._status("VmRSS")
    assert rss is not None
    chunk = 64 << 10  # under glibc's mmap threshold: the heap's, not a mapping of its own
    count = (max(0, memory.RELEASE_FROM - rss) + (256 << 20)) // chunk
    blocks = [bytes(chunk) for _ in range(count)]  # zeroed: resident
    keep = bytes(chunk)  # allocated after them: the heap's top stays in use, so only a trim returns them
    full = memory._status("VmRSS")
    del blocks
    freed = memory._status("VmRSS")
    helper = threading.Thread(target=memory.release)
    helper.start()
    helper.join()
    after = memory._status("VmRSS")
    assert full - rss > 128 << 20 and full - freed < 64 << 20, "no resident heap freed without a trim: nothing shown"
    assert after < rss + (32 << 20), (rss, full, freed, after)  # what was freed (and free before) went back
    del keep
