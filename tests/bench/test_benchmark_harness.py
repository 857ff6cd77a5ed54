"""The benchmark harness runs end to end on the smallest model: every studio recipe it ships
applies, every variant is measured in one interleaved run, and the files it commits are written.
(Speed goals themselves live in benchmarks/results, never in tests.)"""

import json

import pytest

from benchmarks import run


@pytest.mark.slow
def test_harness_on_demo_mlp(tmp_path):
    results = run.main(["--models", "demo-mlp", "--rounds", "1", "--epochs", "1", "--no-overhead", "--out", str(tmp_path)])
    rows = results["models"]["demo-mlp"]["variants"]
    assert rows[0]["variant"] == "FP32" and rows[0]["x_faster"]["256"] == 1.0
    studio = {r["variant"]: r for r in rows if r["kind"] == "studio"}
    assert set(studio) == {"studio: smallest", "studio: fastest"}
    assert all("FAILED" not in r["note"] and 0.5 < r["quality"] <= 1 for r in studio.values())
    # the smallest recipe ships the packed file, measured as such
    assert studio["studio: smallest"]["shipped_bytes"] < studio["studio: smallest"]["onnx_bytes"] / 10
    assert studio["studio: fastest"]["parameters"] < rows[0]["parameters"] / 2  # channels really removed
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["models"]["demo-mlp"]["variants"] == json.loads(json.dumps(rows))
    assert "| studio: smallest |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
