import time
from pathlib import Path

import pytest
import yaml

from studio.core import safe_yaml
from studio.core.errors import StudioError
from studio.core.passes import registry
from studio.core.recipe import MAX_BYTES, Recipe, RecipeStep, demo_recipe

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ROOT / "tests" / "hostile" / "recipes"
EXPECTED = yaml.safe_load((HOSTILE / "expected.yaml").read_text())  # our own file: plain safe_load


def refusal(path) -> str:
    started = time.perf_counter()
    with pytest.raises(StudioError) as info:
        Recipe.load(path)
    assert time.perf_counter() - started < 2  # refused, not worked through
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    return message


def test_round_trip_through_yaml(tmp_path):
    recipe = Recipe(
        [
            RecipeStep("prune.magnitude", {"sparsity": 0.75, "ignore": ["fc2", "re:conv\\d"]}),
            RecipeStep("quantize.int8_static", {"method": "entropy"}, enabled=False),
        ],
        name="mine",
    )
    path = tmp_path / "r.yaml"
    recipe.save(path)
    text = path.read_text()
    assert "studio_recipe: 1" in text and "sparsity: 0.75" in text and "enabled: false" in text
    back = Recipe.load(path)
    assert back.name == "mine"
    assert [(s.id, s.options, s.enabled) for s in back.passes] == [
        ("prune.magnitude", {"sparsity": 0.75, "ignore": ["fc2", "re:conv\\d"]}, True),
        ("quantize.int8_static", {"method": "entropy"}, False),
    ]
    assert [p.id for p in back.build()] == ["prune.magnitude"]  # disabled steps do not run


def test_defaults_are_not_written(tmp_path):
    path = tmp_path / "r.yaml"
    Recipe([RecipeStep("prune.magnitude", {"sparsity": 0.8})]).save(path)  # 0.8 is the default
    assert "sparsity" not in path.read_text()


def test_every_pass_with_default_options_round_trips(tmp_path):
    """Hardening must never refuse the studio's own files."""
    ids = list(registry.all_passes())
    assert len(ids) >= 10
    recipe = Recipe([RecipeStep(pid, {}, enabled=i % 2 == 0) for i, pid in enumerate(ids)], name="all passes")
    path = tmp_path / "all.yaml"
    recipe.save(path)
    back = Recipe.load(path)
    assert back == recipe
    assert back.to_dict() == recipe.to_dict()


# Layer names that YAML 1.1 or 1.2 would read as something else if written bare
TRICKY_NAMES = ["fc1", "re:conv\\d", "Conv", "1e3", "0o17", "0x1F", "010", "1:30", "1_000", "yes", "no", "on",
                "null", "~", "True", "2024-01-01", "<<", "=", "a: b", "- x", "#c", "&a", "*a", "!t", "é", ""]


def other_values(schema: dict) -> list:
    """Candidate non-default values for one option, from its JSON schema."""
    if "enum" in schema:
        return list(schema["enum"])
    kind = schema.get("type")
    if kind == "boolean":
        return [True, False]
    if kind == "integer":
        return [v for v in (schema.get("minimum"), schema.get("maximum"), 3, 7) if v is not None]
    if kind == "number":
        return [0.123, 0.5, 1e-5, 3.75, 0.95]
    if kind == "string":
        return ["1e3", "zoo:resnet18"]
    if kind == "array":
        return [TRICKY_NAMES]
    raise AssertionError(f"no test values for {schema}")


def test_every_option_changed_round_trips(tmp_path):
    """Each option of each pass set to a non-default value (strings YAML could misread among
    them) is saved, read back identical, and the file is plain YAML any reader agrees on."""
    steps = []
    for pid, cls in registry.all_passes().items():
        options = {}
        for name, schema in cls.Config.model_json_schema()["properties"].items():
            default = cls.Config.model_fields[name].get_default(call_default_factory=True)
            for value in other_values(schema):
                if value == default:
                    continue
                try:
                    registry.create(pid, **options, **{name: value})
                except StudioError:
                    continue
                options[name] = value
                break
            assert name in options, f"{pid}.{name}: no valid non-default test value"
        steps.append(RecipeStep(pid, options, enabled=len(steps) % 3 != 1))
    recipe = Recipe(steps, name="1e3: all options, changed")
    path = tmp_path / "changed.yaml"
    recipe.save(path)
    back = Recipe.load(path)
    assert back == recipe
    assert yaml.safe_load(path.read_text()) == recipe.to_dict()  # a YAML 1.1 reader agrees


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load_and_round_trip(tmp_path, path):
    recipe = Recipe.load(path)
    assert recipe.passes and recipe.build()
    recipe.save(tmp_path / path.name)
    assert Recipe.load(tmp_path / path.name).to_dict() == recipe.to_dict()


def test_yaml_12_scalars(tmp_path):
    """Plain values read as YAML 1.2: 1e-3 is a number, 010 is ten, `on` and dates are text."""
    path = tmp_path / "r.yaml"
    path.write_text("studio_recipe: 1\nname: 2024-01-01\npasses:\n"
                    "  - id: prune.magnitude\n    learning_rate: 1e-3\n    fine_tune_epochs: 010\n"
                    "    ignore: [on, off, yes, 1:30]\n    enabled: true\n")
    recipe = Recipe.load(path)
    assert recipe.name == "2024-01-01"
    (step,) = recipe.passes
    assert step.options == {"learning_rate": 0.001, "fine_tune_epochs": 10, "ignore": ["on", "off", "yes", "1:30"]}
    assert step.enabled is True


def test_hostile_table_lists_every_file():
    files = {p.name for p in HOSTILE.iterdir()} - {"expected.yaml"}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_recipes_are_refused_in_one_line(name):
    message = refusal(HOSTILE / name)
    assert message.startswith(f"{name}: {EXPECTED[name]}")


@pytest.fixture
def pure_python_yaml(monkeypatch):
    """safe_yaml as it is where PyYAML has no libyaml (its parser in Python)."""
    import importlib

    monkeypatch.delattr(yaml, "CSafeLoader")
    importlib.reload(safe_yaml)
    assert safe_yaml._Base is yaml.SafeLoader
    yield
    monkeypatch.undo()
    importlib.reload(safe_yaml)
    assert safe_yaml._Base is yaml.CSafeLoader


PARSER_WORDING = {"nul_byte.yaml", "syntax_error.yaml"}  # the two parsers word syntax errors differently


def test_hostile_recipes_without_libyaml(pure_python_yaml):
    for name, expected in EXPECTED.items():
        message = refusal(HOSTILE / name)
        if name in PARSER_WORDING:
            assert message.startswith(f"{name}: ") and "not valid YAML" in message
        else:
            assert message.startswith(f"{name}: {expected}")


def test_billion_laughs_is_small_and_refused():
    """The issue's report: a few hundred bytes that hung `studio run`."""
    assert (HOSTILE / "billion_laughs.yaml").stat().st_size < 600
    assert "anchors and aliases" in refusal(HOSTILE / "billion_laughs.yaml")


def test_oversized_and_overfull_files_are_refused_quickly(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("studio_recipe: 1\npasses: []\n" + "#" * MAX_BYTES)
    assert refusal(big) == "big.yaml: larger than 1 MiB; is it a recipe?"
    full = tmp_path / "full.yaml"
    full.write_text("studio_recipe: 1\nname: x\npasses:\n  - id: prune.magnitude\n    ignore: ["
                    + ", ".join(f"l{i}" for i in range(safe_yaml.MAX_NODES)) + "]\n")
    assert full.stat().st_size < MAX_BYTES
    assert refusal(full) == f"full.yaml: line 5: more than {safe_yaml.MAX_NODES:,} values"


def test_a_long_ignore_list_still_loads(tmp_path):
    names = [f"model.layers.{i}.self_attn.q_proj" for i in range(5000)]
    path = tmp_path / "long.yaml"
    Recipe([RecipeStep("prune.magnitude", {"ignore": names})]).save(path)
    assert Recipe.load(path).passes[0].options["ignore"] == names


def test_unreadable_paths_and_odd_file_names(tmp_path):
    assert refusal(tmp_path).startswith("cannot read recipe")
    assert refusal(tmp_path / "missing.yaml").startswith("cannot read recipe")
    odd = tmp_path / "two\nlines.yaml"
    odd.write_text("passes: {}\n")
    assert refusal(odd) == "two lines.yaml: 'passes' must be a list"


def test_recipes_made_in_the_window_are_checked_before_a_run():
    """The window builds steps itself (no file): a bad pattern still fails at validate(), named."""
    recipe = Recipe([RecipeStep("quantize.fp16", {}), RecipeStep("prune.magnitude", {"targets": ["re:("]})])
    with pytest.raises(StudioError, match=r"prune.magnitude: targets: 're:\(' is not a regular expression"):
        recipe.validate()
    recipe.passes[1].enabled = False
    recipe.validate()  # a disabled step does not run


def test_demo_recipe_is_valid():
    assert [p.id for p in demo_recipe().build()] == ["prune.magnitude", "quantize.int8_static"]


def test_ship_choice_round_trips_and_is_checked(tmp_path):
    recipe = Recipe.load(Path(__file__).parents[2] / "recipes" / "fastest.yaml")
    assert (recipe.ship, recipe.max_drop) == ("fastest", 1.0)
    recipe.save(tmp_path / "r.yaml")
    again = Recipe.load(tmp_path / "r.yaml")
    assert (again.ship, again.max_drop) == ("fastest", 1.0) and again.to_dict() == recipe.to_dict()
    assert "ship" not in demo_recipe().to_dict()  # the default (last) is not written
    for text, message in [("ship: best\n", "ship must be one of last, fastest, smallest"),
                          ("ship: fastest\nmax_drop: '1'\n", "max_drop is points of quality"),
                          ("ship: fastest\nmax_drop: 101\n", "max_drop is points of quality")]:
        (tmp_path / "bad.yaml").write_text("studio_recipe: 1\n" + text + "passes: []\n")
        with pytest.raises(StudioError, match=message):
            Recipe.load(tmp_path / "bad.yaml")


def test_export_list_round_trips_and_is_checked(tmp_path):
    (tmp_path / "r.yaml").write_text("studio_recipe: 1\nexport: [onnx, tflite, pte_int8]\npasses: []\n")
    recipe = Recipe.load(tmp_path / "r.yaml")
    assert recipe.export == ["onnx", "tflite", "pte_int8"]
    recipe.save(tmp_path / "again.yaml")
    assert Recipe.load(tmp_path / "again.yaml").export == recipe.export
    assert "export" not in demo_recipe().to_dict()  # the default (onnx, packed after clustering) is not written
    for text, message in [("export: onnx\n", "export is a list of formats, as in 'export: \\[onnx, tflite\\]'"),
                          ("export: [onnx, 1]\n", "export is a list of formats"),
                          ("export: ['../x']\n", "export is a list of formats"),
                          ("export: [onnx, onnx]\n", "export names a format twice")]:
        (tmp_path / "bad.yaml").write_text("studio_recipe: 1\n" + text + "passes: []\n")
        with pytest.raises(StudioError, match=message):
            Recipe.load(tmp_path / "bad.yaml")
