"""Latency per runtime (core/runtimes.py): `studio run --runtimes ort pte` times every stage in
ExecuTorch (XNNPACK, batch 1) in the same interleaved rounds as onnxruntime's batch 1, side by
side in the stage table; a stage that cannot reach ExecuTorch shows no number and one warning."""

import re
import time
from pathlib import Path

import numpy as np
import pytest

from studio.core import pipeline, stage_table
from studio.core.errors import StudioError
from studio.core.evaluate import Measurement, measure_latency_all
from studio.core.pipeline import Run, Stage
from studio.core.recipe import Recipe, RecipeStep
from studio.core.report import stage_rows
from studio.core.runtimes import check
from studio.core.training import drain


def pool_threads() -> int:
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

    return _threadpool_get_thread_count()


def test_run_times_executorch_beside_onnxruntime_and_says_where_it_cannot(demo_mlp, digits_data):
    # the torch original reaches ExecuTorch (each stage's export takes seconds: one is enough);
    # the INT8 QDQ ONNX stage cannot (onnx2torch has no DequantizeLinear): a dash and one warning
    recipe = Recipe([RecipeStep("quantize.int8_static", {"calibration_samples": 32})])
    threads_before = pool_threads()
    gen = pipeline.run(demo_mlp, recipe, digits_data, latency_batches=(1,), latency_rounds=3,
                       runtimes=("ort", "pte"))
    progress = []
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            run = stop.value
            break
    assert [p.overall for p in progress] == sorted(p.overall for p in progress), "the bar went backwards"
    assert any(p.message.startswith("ExecuTorch (XNNPACK): exporting stage") for p in progress)
    assert pool_threads() == threads_before, "ExecuTorch's threadpool was left at the run's thread count"

    original, int8 = (s.measurement for s in run.stages)
    assert 0 < original.runtime_ms["pte"] < 50 * original.latency_ms[1]
    assert int8.runtime_ms == {} and int8.latency_ms[1] > 0  # onnxruntime still times it
    why = [w for w in run.stages[1].warnings if w.startswith("ExecuTorch (XNNPACK) not measured: ")]
    assert len(why) == 1 and "\n" not in why[0] and "DequantizeLinear" in why[0], run.stages[1].warnings
    assert "passes that need torch" not in why[0]  # onnx2torch's advice about passes is not for this case
    assert not any("ExecuTorch" in w for w in run.stages[0].warnings)
    assert run.runtimes == ("ort", "pte") and run.as_dict()["runtimes"] == ["ort", "pte"]
    assert run.as_dict()["stages"][0]["measurement"]["runtime_ms"] == {"pte": original.runtime_ms["pte"]}

    # the text table: ExecuTorch's batch 1 right beside onnxruntime's, ratios against the original on it
    text = stage_table.text(run)
    lines = text.splitlines()
    assert lines[0].split()[-6:] == ["ms", "b1", "x", "pte", "b1", "x"]
    assert lines[2].split()[-4:] == [f"{original.latency_ms[1]:.3f}", "1.00x", f"{original.runtime_ms['pte']:.3f}", "1.00x"]
    assert lines[3].split()[-2:] == [stage_table.NONE, stage_table.NONE]
    assert "pte b1: ExecuTorch (XNNPACK) latency at batch 1" in text and "same interleaved rounds" in text
    assert f"warning: stage 1 quantize.int8_static: {why[0]}" in text
    # the HTML report: the same cells, and the note
    html = stage_rows(run)
    heads = re.findall(r"<th>([^<]*)</th>", html.split("</table>")[0])
    assert heads[-2:] == ["ms, batch 1, ExecuTorch (XNNPACK)", "x faster, batch 1, ExecuTorch (XNNPACK)"]
    for i, tr in enumerate(re.findall(r"<tr>(<td>.*?)</tr>", html.split("</table>")[0])):
        cells = re.findall(r"<td>([^<]*)</td>", tr)
        assert cells == [stage_table.rows(run)[i].get(c.key, stage_table.Cell(stage_table.NONE, None)).text
                         for c in stage_table.columns(run)]
    assert "pte b1: ExecuTorch (XNNPACK) latency at batch 1" in html


def test_run_times_litert_beside_onnxruntime_with_its_ram_and_says_where_it_cannot(demo_mlp, digits_data):
    # the torch original reaches LiteRT (litert-torch converts it, the interpreter runs it with the
    # run's threads); the INT8 QDQ ONNX stage cannot (onnx2torch has no DequantizeLinear)
    recipe = Recipe([RecipeStep("quantize.int8_static", {"calibration_samples": 32})])
    run = drain(pipeline.run(demo_mlp, recipe, digits_data, latency_batches=(1,), latency_rounds=3,
                             runtimes=("ort", "tflite"), measure_ram=True))
    original, int8 = (s.measurement for s in run.stages)
    assert 0 < original.runtime_ms["tflite"] < 50 * original.latency_ms[1]
    assert 0 < original.runtime_ram_bytes["tflite"] < 200 * 2**20  # a fresh child: the interpreter and its weights
    assert int8.runtime_ms == {} and int8.runtime_ram_bytes == {} and int8.latency_ms[1] > 0
    why = [w for w in run.stages[1].warnings if w.startswith("LiteRT (XNNPACK) not measured: ")]
    assert len(why) == 1 and "\n" not in why[0] and "DequantizeLinear" in why[0], run.stages[1].warnings
    assert not any("LiteRT" in w for w in run.stages[0].warnings)
    assert run.runtimes == ("ort", "tflite")

    lines = stage_table.text(run).splitlines()
    assert lines[0].split()[-6:] == ["ms", "b1", "x", "tflite", "b1", "x"], lines[0]
    assert "RAM tflite" in lines[0]
    assert lines[2].split()[-2:] == [f"{original.runtime_ms['tflite']:.3f}", "1.00x"]
    assert lines[3].split()[-2:] == [stage_table.NONE, stage_table.NONE]
    text = "\n".join(lines)
    assert "tflite b1: LiteRT (XNNPACK) latency at batch 1" in text and "same interleaved rounds" in text
    assert "RAM tflite: resident memory LiteRT (XNNPACK) took" in text


def test_onnxruntime_only_unless_asked_and_unknown_runtimes_refused(demo_mlp, digits_data):
    run = drain(pipeline.run(demo_mlp, Recipe([]), digits_data, latency_batches=(1,), latency_rounds=2))
    assert run.runtimes == ("ort",) and run.stages[0].measurement.runtime_ms == {}
    assert "pte" not in stage_table.text(run).splitlines()[0]
    assert check(["pte"]) == ("ort", "pte") and check(None) == ("ort",)
    assert check(["tflite", "pte"]) == ("ort", "tflite", "pte")
    with pytest.raises(StudioError, match="unknown runtime 'coreml'; choose from ort, pte, tflite"):
        check(["coreml"])
    with pytest.raises(StudioError, match="unknown runtime"):  # refused before any work
        drain(pipeline.run(demo_mlp, Recipe([]), digits_data, runtimes=("ort", "coreml")))


def test_other_runtimes_share_the_rounds_and_get_their_own_without_batch_1(demo_mlp):
    """measure_latency_all times the other runtimes' calls in the rounds of onnxruntime's batch 1,
    or, with no batch 1 asked, in batch-1 rounds of their own; the median of what each call took."""
    from studio.core.convert import to_onnx_proto

    calls = []

    def two_ms():
        calls.append(1)
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass

    proto = to_onnx_proto(demo_mlp)
    latencies, others, _ = drain(measure_latency_all([proto, proto], demo_mlp.input_shape, (4,), rounds=3,
                                                  others={"slow": [two_ms, None]}))
    assert [sorted(lat) for lat in latencies] == [[4], [4]], "onnxruntime is not timed at a batch not asked"
    # at least the 2 ms the call spins, in milliseconds (not s or us); a busy machine adds to it
    assert 2.0 <= others[0]["slow"] < 50.0 and others[1] == {}
    assert len(calls) >= 2 + 3  # warm-up, sizing, then every round
    # the table puts the column before the batch it has, ratio against the original on that runtime
    base = Measurement(latency_ms={4: 1.0}, runtime_ms={"pte": 2.0})
    faster = Measurement(latency_ms={4: 0.5}, runtime_ms={"pte": 0.5})
    table = Run("r", Recipe(), [Stage(0, "original", "0 original", None, measurement=base),
                                Stage(1, "p", "1 p", None, measurement=faster)], runtimes=("ort", "pte"))
    assert [c.key for c in stage_table.columns(table)][-4:] == ["pte_ms_1", "pte_x_1", "ms_4", "x_4"]
    assert stage_table.rows(table)[1]["pte_x_1"].text == "4.00x"
    assert "in interleaved rounds" in stage_table.text(table)
    assert np.isfinite(stage_table.rows(table)[1]["pte_ms_1"].value)


def test_studio_run_refuses_an_unknown_runtime_before_the_run(tmp_path, capsys):
    from studio import cli

    recipe = tmp_path / "none.yaml"
    recipe.write_text("studio_recipe: 1\npasses: []\n")
    code = cli.main(["run", "demo:mlp", "--recipe", str(recipe), "--runtimes", "ort", "coreml",
                     "--out", str(tmp_path / "refused"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown runtime 'coreml'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "refused").exists()  # refused before the run


@pytest.mark.slow  # ExecuTorch imported and a program lowered from a fresh start: ~25 s here
def test_studio_run_runtimes_on_the_command_line(tmp_path, capsys):
    from studio import cli

    recipe = tmp_path / "none.yaml"
    recipe.write_text("studio_recipe: 1\npasses: []\n")
    code = cli.main(["run", "demo:mlp", "--recipe", str(recipe), "--runtimes", "pte", "--batches", "1",
                     "--rounds", "2", "--out", str(tmp_path / "out"), "-q"])
    out = capsys.readouterr().out
    assert code == 0
    head, _, row = out.splitlines()[:3]
    assert head.split()[-9:] == ["RAM", "RAM", "pte", "ms", "b1", "x", "pte", "b1", "x"], head
    assert row.split()[-1] == "1.00x"
    import json

    measured = json.loads((tmp_path / "out" / "report.json").read_text())["stages"][0]["measurement"]
    assert measured["runtime_ram_bytes"]["pte"] > 0 and measured["runtime_ms"]["pte"] > 0
    assert "RAM pte: resident memory ExecuTorch (XNNPACK) took" in out
    assert "pte b1: ExecuTorch (XNNPACK) latency at batch 1" in out
    html = (tmp_path / "out" / "report.html").read_text()
    assert "ms, batch 1, ExecuTorch (XNNPACK)" in html


def test_executorch_ram_counts_the_weights_the_program_holds():
    import torch

    from studio.core.memory import pte_ram
    from studio.core.model import TORCH, Model
    from studio.core.runtimes import runner

    torch.manual_seed(0)
    n = 2048  # 16 MiB of float32 weights
    model = Model(torch.nn.Sequential(torch.nn.Linear(n, n)).eval(), TORCH, (1, n), name="linear")
    loaded = runner("pte", model, np.zeros((1, n), np.float32))
    ram = pte_ram(loaded.file, loaded.args)  # a fresh process: torch and ExecuTorch imported before it counts
    assert ram is not None and 16 * 2**20 < ram < 5 * 16 * 2**20, ram  # resident, and not copied many times


def test_litert_ram_counts_the_weights_the_interpreter_holds():
    import torch

    from studio.core.memory import runtime_ram
    from studio.core.model import TORCH, Model
    from studio.core.runtimes import runner

    torch.manual_seed(0)
    n = 2048  # 16 MiB of float32 weights
    model = Model(torch.nn.Sequential(torch.nn.Linear(n, n)).eval(), TORCH, (1, n), name="linear")
    loaded = runner("tflite", model, np.zeros((1, n), np.float32), threads=1)
    loaded()  # runs again: inputs set, invoked
    ram = runtime_ram("tflite", loaded.file, loaded.args)  # the file read, XNNPACK's packed copy, the arena
    assert ram is not None and 16 * 2**20 < ram < 5 * 16 * 2**20, ram


@pytest.mark.slow
def test_studio_run_writes_the_formats_the_recipe_lists(tmp_path, capsys):
    """A recipe's `export:` list is what `studio run` writes (verified), unless --export says otherwise;
    a format that does not exist is refused before the run."""
    import json

    from studio import cli

    recipe = tmp_path / "edge.yaml"
    recipe.write_text("studio_recipe: 1\nexport: [ort, pte]\npasses:\n  - id: prune.magnitude\n    sparsity: 0.5\n")
    out = tmp_path / "out"
    code = cli.main(["run", "demo:mlp", "--recipe", str(recipe), "--out", str(out), "--no-ram", "-q",
                     "--batches", "1", "--rounds", "2"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert [(e["format"], e["verified"]) for e in report["exports"]] == [("ort", True), ("pte", True)]
    assert sorted(p.suffix for p in out.iterdir() if p.suffix in (".ort", ".pte", ".onnx")) == [".ort", ".pte"]

    # a format the shipped stage cannot reach (INT8 QDQ -> torch for LiteRT): that file is not written,
    # the run, its table and the other files stand, and the exit code says not everything shipped
    recipe.write_text("studio_recipe: 1\nexport: [onnx, tflite]\npasses:\n  - id: quantize.int8_static\n"
                      "    calibration_samples: 32\n    remedies: false\n")
    capsys.readouterr()
    code = cli.main(["run", "demo:mlp", "--recipe", str(recipe), "--out", str(tmp_path / "int8"), "--no-ram",
                     "--batches", "1", "--rounds", "2", "-q"])
    printed = capsys.readouterr().out
    assert code == 1 and "1 quantize.int8_static" in printed
    report = json.loads((tmp_path / "int8" / "report.json").read_text())
    (onnx_file, tflite) = report["exports"]
    assert onnx_file["verified"] and onnx_file["written"] and Path(onnx_file["path"]).is_file()
    assert not tflite["written"] and "DequantizeLinear" in tflite["message"] and not Path(tflite["path"]).exists()
    assert "export tflite       NOT WRITTEN" in printed

    recipe.write_text("studio_recipe: 1\nexport: [onnx, coreml]\npasses: []\n")
    capsys.readouterr()
    code = cli.main(["run", "demo:mlp", "--recipe", str(recipe), "--out", str(tmp_path / "refused"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown export format 'coreml'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "refused").exists()
