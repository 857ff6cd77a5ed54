"""benchmarks/scale.py --quick end to end: a 2-layer BERT-style ONNX through the real
`studio inspect` and `studio run` child processes; the json it writes has every figure, sane.
(The goals themselves are judged in benchmarks/results, never in tests.)"""

import json

import pytest

from benchmarks import scale


@pytest.mark.slow
def test_scale_quick_writes_every_figure(tmp_path):
    scale.main(["--quick", "--out", str(tmp_path), "--inspect-runs", "1"])
    r = json.loads((tmp_path / "scale.json").read_text())
    assert r["quick"] and r["cpus"] >= 1 and r["cpu"].endswith(")") and len(r["load_before"]) == 3 and r["date"]
    assert r["model"]["layers"] == 2 and r["model"]["width"] == 128
    assert 4_000_000 < r["model"]["parameters"] < 5_000_000  # 30522 x 128 token embeddings and 2 blocks
    ins = r["inspect"]
    assert ins["goal_s"] == 10.0 and 0 < ins["median_s"] < 120 and isinstance(ins["met"], bool)
    assert ins["parameters"] == r["model"]["parameters"] and ins["peak_rss_mb"] > 20
    run = r["run"]
    assert run["goal_s"] == 300.0 and 0 < run["wall_s"] < 600 and isinstance(run["met_time"], bool)
    assert run["peak_rss_goal_bytes"] == int(3 * run["model_bytes"] + 0.5e9)
    # python with torch and onnxruntime alone is over 100 MB; the tree's peak is at least its largest process's
    # (give or take the 50 ms sampling)
    assert 100e6 < run["peak_rss_largest_process_bytes"] <= run["peak_rss_bytes"] < 8e9
    assert run["rss_samples"] > 10 and isinstance(run["met_memory"], bool)
    progress = run["progress"]
    assert progress["moved"] and progress["distinct_percent_values"] > 5 and progress["updates"] > 10
    assert 0 < progress["first_update_s"] <= progress["longest_gap_between_updates_s"]
    assert 0 < progress["longest_gap_between_updates_s"] < run["wall_s"]
    assert 0 < progress["longest_percent_unchanged_s"] < run["wall_s"]
    assert run["exports"] == [{"format": "onnx", "verified": True, "size_bytes": run["exports"][0]["size_bytes"]}]
    assert run["exports"][0]["size_bytes"] < run["model_bytes"] / 2  # INT8 weights
    steps = {p["step"]: p for p in run["phases"]}
    assert "quantize.int8_static: calibrating" in steps and "measuring the original model" in steps
    assert all(p["seconds"] >= 0 and p["peak_rss_bytes"] <= run["peak_rss_tree_sampled_bytes"] for p in run["phases"])
    assert sum(p["seconds"] for p in run["phases"]) == pytest.approx(run["wall_s"], abs=0.5)
    assert run["other_stderr_lines"] == 0  # onnxruntime's per-weight notes are in the try's record, not here
    md = (tmp_path / "scale.md").read_text()
    assert "| quantize.int8_static: calibrating |" in md
    assert "QUICK" in md and "| <= 10 s |" in md and "| <= 5 min |" in md and "ResNet-50" in md
