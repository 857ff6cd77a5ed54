import pytest

from studio.core.errors import StudioError
from studio.core.recipe import Recipe, RecipeStep, demo_recipe


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


@pytest.mark.parametrize(
    "text, message",
    [
        ("passes: [{id: prune.nope}]", "unknown pass 'prune.nope'"),
        ("passes: [{id: prune.magnitude, sparsity: 1.5}]", "sparsity"),
        ("passes: [{id: prune.magnitude, colour: red}]", "colour"),
        ("studio_recipe: 99\npasses: []", "version 99"),
        ("passes: [{sparsity: 0.5}]", "needs an 'id'"),
        ("passes: {a: 1}", "must be a list"),
        ("- just\n- a list", "mapping"),
        ("passes: [unclosed", "not valid YAML"),
        ("!!python/object/apply:os.system ['echo pwned']", "not valid YAML"),
    ],
)
def test_bad_recipes_give_one_line_reasons(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(StudioError) as info:
        Recipe.load(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_demo_recipe_is_valid():
    assert [p.id for p in demo_recipe().build()] == ["prune.magnitude", "quantize.int8_static"]
