"""Teacher generation backends."""

import sys

import pytest

from core.config import GenerationSettings, ModelSettings
from core.errors import UserError


@pytest.fixture(scope="module")
def backend(tiny_models):
    from teacher.backends import TransformersBackend

    return TransformersBackend(ModelSettings(path=str(tiny_models["qwen2"])))


def test_k_samples_per_prompt_seeded(backend):
    settings = GenerationSettings(num_samples=3, max_new_tokens=12, temperature=1.0, batch_size=2)
    first = backend.sample(["Title: A\nPassage: one", "Title: B\nPassage: two"], settings, seeds=[1, 2])
    assert [len(s) for s in first] == [3, 3]
    assert all(0 < x.num_tokens <= 12 for s in first for x in s)
    # a prompt's samples depend on its own seed only, not on what else is in the call (resume safety)
    alone = backend.sample(["Title: B\nPassage: two"], settings, seeds=[2])
    assert [x.text for x in alone[0]] == [x.text for x in first[1]]
    other = backend.sample(["Title: B\nPassage: two"], settings, seeds=[3])
    assert [x.text for x in other[0]] != [x.text for x in first[1]]


def test_greedy_is_deterministic(backend):
    settings = GenerationSettings(num_samples=2, max_new_tokens=8, temperature=0.0)
    (s,) = backend.sample(["hello"], settings, seeds=[0])
    assert s[0].text == s[1].text


def test_vllm_missing_is_a_clear_error(monkeypatch):
    from teacher.backends import make_backend

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, as on a CPU machine
    with pytest.raises(UserError, match="vllm is not installed"):
        make_backend("vllm", ModelSettings(path="x"))


def test_prompt_templates(tmp_path):
    from teacher.prompts import TEMPLATES, load_template, render

    assert "{passage}" in load_template("implications")
    for name in TEMPLATES:
        assert "Velmora" in render(load_template(name), title="T", passage="Velmora")
    custom = tmp_path / "t.txt"
    custom.write_text("Notes on {title}:\n{passage}\n")
    assert load_template(str(custom)).startswith("Notes on")
    custom.write_text("Notes on {doc}\n")
    with pytest.raises(UserError, match="unknown placeholder"):
        load_template(str(custom))
    with pytest.raises(UserError, match="neither a built-in"):
        load_template("no-such-template")
