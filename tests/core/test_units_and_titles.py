"""Sizes are written one way everywhere; runs are named after their recipe, re-runs marked."""

from studio.core.pipeline import Run, run_titles
from studio.core.recipe import Recipe, RecipeStep
from studio.core.units import fmt_bytes


def test_fmt_bytes_uses_binary_units_named_as_such():
    assert [fmt_bytes(n) for n in (None, 0, 1023, 1536, 5 * 1024**2, 3 * 1024**4)] == \
        ["-", "0 B", "1023 B", "1.5 KiB", "5.0 MiB", "3.0 TiB"]


def test_runs_are_numbered_named_and_re_runs_marked():
    prune = [RecipeStep("prune.magnitude", {"sparsity": 0.5})]
    runs = [Run("a1", Recipe(prune), [], "digits"), Run("b2", Recipe(prune, "smallest"), [], "digits"),
            Run("c3", Recipe(prune), [], "digits"), Run("d4", Recipe(prune), [], "random")]
    assert run_titles(runs) == {"a1": "#1 prune.magnitude", "b2": "#2 smallest (re-run of #1)",
                                "c3": "#3 prune.magnitude (re-run of #1)", "d4": "#4 prune.magnitude"}
