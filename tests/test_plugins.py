"""Plugins: tests/plugin_example, installed by pip into a temp folder (conftest.plugin_site), is
found through its entry points by the command line, runs in a recipe, and its evaluator becomes
the quality; a broken plugin is one warning line and the studio goes on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def studio(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "studio", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_plugin_pass_and_evaluator_are_listed_and_broken_ones_are_one_line_each(plugin_site, tmp_path):
    result = studio(plugin_site, "passes", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    passes = {p["id"]: p for p in listed["passes"]}
    assert passes["example.round"]["origin"] == "studio-plugin-example"
    assert passes["example.round"]["frameworks"] == ["torch", "onnx"]
    assert passes["prune.magnitude"]["origin"] == "built-in"  # the impostor did not replace it
    assert [e["name"] for e in listed["evaluators"]] == ["top2"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("studio: warning: ")]
    assert len(warnings) == 3, result.stderr
    assert not result.stderr.replace("\n", "").count("Traceback")
    joined = "\n".join(warnings)
    assert "'broken'" in joined and "ModuleNotFoundError" in joined
    assert "Impostor" in joined and "'prune.magnitude' is taken" in joined
    assert "'nothing'" in joined and "AttributeError" in joined


def test_plugin_pass_runs_in_a_recipe_measured_by_the_plugin_evaluator(plugin_site, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("studio_recipe: 1\nname: plugin\nevaluator: top2\npasses:\n  - id: example.round\n    step: 0.25\n")
    out = tmp_path / "out"
    result = studio(plugin_site, "run", "demo:mlp", "--recipe", str(recipe), "--data", "digits", "--out", str(out),
                    "--batches", "1", "--rounds", "1", "--json", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["evaluator"] == "top2"
    stages = report["stages"]
    assert [s["name"] for s in stages] == ["original", "example.round"]
    for stage in stages:
        m = stage["measurement"]
        assert m["quality_label"] == "top2" and m["quality"] == m["metric"]
        assert m["quality"] >= m["accuracy"]  # the label among the top two is at least as likely as top-1
    assert stages[1]["layers"] and all(v == {"step": 0.25} for v in stages[1]["layers"].values())
    # the exported file holds the rounded weights
    import onnx

    from studio.core.onnx_weights import layer_weights

    proto = onnx.load(report["exports"][0]["path"])
    arrays = [w.array() for w in layer_weights(proto)]
    assert arrays
    for a in arrays:
        np.testing.assert_allclose(a / 0.25, np.round(a / 0.25), atol=1e-4)


def test_metric_from_the_command_line_is_checked_before_the_model_loads(plugin_site, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("studio_recipe: 1\npasses: []\n")
    bad = studio(plugin_site, "run", "demo:mlp", "--recipe", str(recipe), "--metric", "json:no_such", "-q",
                 cwd=tmp_path)
    assert bad.returncode == 2
    assert "studio: error: evaluator 'json:no_such': json has no 'no_such'\n" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_recipe_names_installed_evaluators_only_and_never_imports_code():
    from studio.core.errors import StudioError
    from studio.core.recipe import Recipe

    with pytest.raises(StudioError, match="unknown evaluator 'studio_plugin_example.metrics:top2'"):
        Recipe.from_dict({"passes": [], "evaluator": "studio_plugin_example.metrics:top2"}, "r.yaml")
    assert "studio_plugin_example.metrics" not in sys.modules
    with pytest.raises(StudioError, match="evaluator must be the name"):
        Recipe.from_dict({"passes": [], "evaluator": 3}, "r.yaml")


def test_an_evaluator_that_fails_or_returns_nonsense_is_one_line():
    from studio.core.errors import StudioError
    from studio.core.plugins import Evaluator

    def boom(outputs, labels, reference):
        raise ValueError("shapes do not match\nmore detail")

    with pytest.raises(StudioError, match=r"^evaluator 'boom' failed: ValueError: shapes do not match$"):
        Evaluator("boom", boom)([np.zeros((2, 3))], None, None)
    with pytest.raises(StudioError, match="returned nan"):
        Evaluator("nan", lambda o, y, r: float("nan"))([np.zeros((2, 3))], None, None)
    with pytest.raises(StudioError, match="returned str, not a number"):
        Evaluator("text", lambda o, y, r: "good")([np.zeros((2, 3))], None, None)
    assert Evaluator("mean", lambda o, y, r: np.float32(0.5))([np.zeros((2, 3))], None, None) == 0.5
