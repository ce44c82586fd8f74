import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import UserError
from pipeline.tasks.arc.data import ArcExample, ArcTask
from pipeline.tasks.arc.recipe import (
    FIELDS,
    Recipe,
    RecipeBounds,
    RecipeError,
    parse_recipe,
    recipe_prompt,
    training_steps,
)

VALID = {
    "use_basic": True,
    "use_size": False,
    "use_chain": True,
    "use_repeat": False,
    "loss": "output",
    "learning_rate": 1e-4,
    "epochs": 3,
}
EXPECTED = Recipe(True, False, True, False, "output", 1e-4, 3)


def _with(**changes):
    d = dict(VALID)
    for k, v in changes.items():
        if v is _DROP:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d)


_DROP = object()


def _reason(text, **kw) -> str:
    with pytest.raises(RecipeError) as e:
        parse_recipe(text, **kw)
    assert e.value.reason == str(e.value)
    return e.value.reason


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(VALID),
        f"```json\n{json.dumps(VALID, indent=2)}\n```",
        f"Here is my recipe:\n```\n{json.dumps(VALID)}\n```\nIt should work well.",
        f"I think rotations help. {json.dumps(VALID)} That's all.",
        "Sure {not json} here: " + json.dumps(VALID),
        json.dumps(
            {
                "augmentations": {"use_basic_augmentations": True, "use_size_augmentations": False,
                                  "use_chain_augmentations": True, "use_repeat_augmentations": False},
                "training": {"loss": "output", "lr": 0.0001, "num_train_epochs": 3},
            }
        ),
        _with(epochs=3.0),
        _with(learning_rate=1e-4),
    ],
)
def test_valid_recipes(text):
    assert parse_recipe(text) == EXPECTED


def test_fenced_object_wins_over_prose_braces():
    text = 'Format is {"use_basic": ...}.\n```json\n' + json.dumps(VALID) + "\n```"
    assert parse_recipe(text) == EXPECTED


@pytest.mark.parametrize(
    "text, reason",
    [
        ("I would rotate the grids.", "no JSON object in the output"),
        ('{"use_basic": true, "use_size": false,}', "malformed JSON: no complete object could be decoded"),
        ('```json\n{"use_basic": true, "use_size": fal', "malformed JSON: no complete object could be decoded"),
        ("{'use_basic': True}", "malformed JSON: no complete object could be decoded"),
        ("[1, 2, 3]", "no JSON object in the output"),
    ],
)
def test_malformed(text, reason):
    assert _reason(text) == reason


def test_partial():
    assert _reason(_with(epochs=_DROP, loss=_DROP)) == "missing field(s): loss, epochs"
    assert _reason('{"use_basic": true}') == (
        "missing field(s): use_size, use_chain, use_repeat, loss, learning_rate, epochs"
    )
    # A truncated outer object falls back to its complete inner one, which is partial.
    truncated = '{"augmentations": {"use_basic": true, "use_size": false}, "training": {"loss": "all"'
    assert _reason(truncated).startswith("missing field(s): use_chain")


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"use_basic": "true"}, 'use_basic must be true or false, got "true"'),
        ({"use_repeat": 1}, "use_repeat must be true or false, got 1"),
        ({"loss": "input"}, 'loss must be one of [\'all\', \'output\'], got "input"'),
        ({"learning_rate": "1e-4"}, 'learning_rate must be a number, got "1e-4"'),
        ({"learning_rate": True}, "learning_rate must be a number, got true"),
        ({"learning_rate": 0}, "learning_rate 0 outside (0, 0.01]"),
        ({"learning_rate": -1e-4}, "learning_rate -0.0001 outside (0, 0.01]"),
        ({"learning_rate": 0.02}, "learning_rate 0.02 outside (0, 0.01]"),
        ({"epochs": 0}, "epochs 0 outside [1, 10]"),
        ({"epochs": 11}, "epochs 11 outside [1, 10]"),
        ({"epochs": 2.5}, "epochs must be an integer, got 2.5"),
        ({"epochs": "3"}, 'epochs must be an integer, got "3"'),
        ({"epochs": None}, "epochs must be an integer, got null"),
        ({"seed": 3}, "unknown field(s): seed"),
    ],
)
def test_wrong_types_and_ranges(changes, reason):
    assert _reason(_with(**changes)) == reason


def test_non_finite_and_duplicates():
    assert _reason(_with().replace("0.0001", "NaN")) == "learning_rate must be a number, got NaN"
    assert _reason(_with().replace("0.0001", "Infinity")) == "learning_rate must be a number, got Infinity"
    d = dict(VALID, num_train_epochs=4)
    assert _reason(json.dumps(d)) == "field 'epochs' given more than once"


def test_bounds_are_configurable():
    bounds = RecipeBounds(max_learning_rate=1e-3, min_epochs=2, max_epochs=20)
    assert parse_recipe(_with(epochs=15), bounds).epochs == 15
    assert _reason(_with(epochs=1), bounds=bounds) == "epochs 1 outside [2, 20]"
    assert _reason(_with(learning_rate=5e-3), bounds=bounds) == "learning_rate 0.005 outside (0, 0.001]"
    with pytest.raises(ValueError):
        RecipeBounds(min_epochs=5, max_epochs=2)


def test_recipe_error_is_not_a_user_error():
    assert not issubclass(RecipeError, UserError)
    assert issubclass(RecipeError, ValueError)
    assert _reason(None) == "expected text, got NoneType"


recipes = st.builds(
    Recipe,
    use_basic=st.booleans(),
    use_size=st.booleans(),
    use_chain=st.booleans(),
    use_repeat=st.booleans(),
    loss=st.sampled_from(["all", "output"]),
    learning_rate=st.floats(min_value=1e-7, max_value=1e-2, allow_nan=False),
    epochs=st.integers(1, 10),
)


@given(recipe=recipes, prose=st.text(alphabet=st.characters(blacklist_characters="{}`"), max_size=40))
@settings(deadline=None, max_examples=80)
def test_round_trip(recipe, prose):
    assert parse_recipe(recipe.to_json()) == recipe
    assert parse_recipe(f"{prose}\n```json\n{recipe.to_json()}\n```\n{prose}") == recipe


def test_groups_property():
    assert EXPECTED.groups == ("basic", "chain")
    assert Recipe(False, False, False, False, "all", 1e-3, 1).groups == ()


def test_training_steps():
    r = Recipe(True, True, True, True, "all", 1e-4, 3)
    assert training_steps(r, 10, 4) == 9  # ceil(10/4)=3 batches x 3 epochs
    assert training_steps(r, 10, 4, gradient_accumulation_steps=2) == 6
    assert training_steps(r, 0, 4) == 0
    with pytest.raises(ValueError):
        training_steps(r, 10, 0)


def test_recipe_prompt_shows_demos_and_explains_every_key():
    task = ArcTask("p", (ArcExample(((1, 2), (3, 4)), ((4, 3),)), ArcExample(((0,),), ((9,),))), (((5, 5),),))
    prompt = recipe_prompt(task)
    assert "Example 1\nInput:\n12\n34\nOutput:\n43" in prompt
    assert "Example 2\nInput:\n0\nOutput:\n9" in prompt
    assert "55" not in prompt  # the test input is not shown
    for key in FIELDS:
        assert f'"{key}"' in prompt
    assert "at most 0.01" in prompt and "from 1 to 10" in prompt
    example = prompt.split("Example of the format:\n")[1].splitlines()[0]
    parse_recipe(example)  # the prompt's own example must be valid
    narrow = recipe_prompt(task, RecipeBounds(max_learning_rate=1e-3, max_epochs=5))
    assert "at most 0.001" in narrow and "from 1 to 5" in narrow
