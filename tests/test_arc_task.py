"""The few-shot ARC self-edit task on tiny models: recipes in, masked training data, real test-time training, pass@2."""

import json
from pathlib import Path

import pytest
import torch

from core.config import GenerationSettings, LoraSettings, ModelSettings, TrainSettings
from core.errors import UserError
from pipeline.settings import AdaptConfig, ArcSettings
from pipeline.settings import TrainTeacherConfig
from pipeline.tasks.arc.data import ArcExample, ArcTask, load_tasks
from pipeline.tasks.arc.recipe import FIELDS
from pipeline.tasks.arc.render import IGNORE_INDEX, grid_to_text, predict_messages, prompt_text, text_to_grid
from pipeline.tasks.arc.task import ArcFewShotTask, output_chars
from teacher.backends import Sample

ARC_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/seal/few-shot/data"

PAPER_MODULES = ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
TRAIN = TrainSettings(batch_size=2, lr_scheduler="cosine")


def recipe(**changes):
    r = {"use_basic": False, "use_size": False, "use_chain": False, "use_repeat": False, "loss": "output",
         "learning_rate": 1e-3, "epochs": 1}
    r.update(changes)
    return json.dumps(r)


def g(*rows):
    return tuple(tuple(r) for r in rows)


# Every output is the 1x1 grid "3": learnable by a random tiny model in a few dozen steps.
CONSTANT = ArcTask("constant", tuple(ArcExample(g([i, 0], [0, i]), g([3])) for i in (1, 2, 4, 5)),
                   (g([7, 0], [0, 7]),), (g([3]),))


@pytest.fixture(scope="module")
def real_task():
    path = ARC_DIR / "arc-agi_evaluation_challenges_filtered_1B_eval_set.json"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    tasks = load_tasks(path, ARC_DIR / "arc-agi_evaluation_solutions_filtered_1B_eval_set.json")
    return tasks["66e6c45b"]  # 2 demonstrations of 4x4 grids: the smallest task of the file


@pytest.fixture(scope="module")
def engine(tiny_models):
    from student.engine import StudentEngine

    return StudentEngine(ModelSettings(path=str(tiny_models["llama"])),
                         LoraSettings(r=8, alpha=16, target_modules=PAPER_MODULES))


def arc_task(tokenizer, **settings):
    return ArcFewShotTask(tokenizer, ArcSettings(**settings), TRAIN, seed=0, eval_batch_size=8)


# ------------------------------------------------------------------------------------------ training data


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_output_loss_covers_exactly_the_output_tokens(arch, tiny_models, real_task):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models[arch])
    task = arc_task(tok)
    prepared = task.prepare(real_task, recipe(use_basic=True, loss="output"))
    assert prepared.valid, prepared.reason
    edit = prepared.payload
    examples = edit.examples(tok)
    assert len(examples) == prepared.info["examples"] == len(edit.tasks) > 2
    for ex, t in zip(examples, edit.tasks):
        pos = [i for i, lab in enumerate(ex.labels) if lab != IGNORE_INDEX]
        assert pos == list(range(pos[0], pos[-1] + 1))  # one contiguous span
        labeled = [ex.input_ids[i] for i in pos]
        assert [ex.labels[i] for i in pos] == labeled
        # the answer grid, then the template's turn end (so the student learns to stop), nothing else
        assert tok.decode(labeled[:-1]) == grid_to_text(t.test_outputs[0])
        assert tok.convert_ids_to_tokens(labeled[-1]) == tok.eos_token
        # the span starts exactly where generation starts at test time
        assert tok.decode(ex.input_ids[: pos[0]]) == prompt_text(tok, predict_messages(t))

    everything = task.prepare(real_task, recipe(use_basic=True, loss="all")).payload.examples(tok)
    assert [e.input_ids for e in everything] == [e.input_ids for e in examples]
    assert all(e.labels == e.input_ids for e in everything)


def test_valid_recipe_data_is_seeded_capped_and_budgeted(tiny_models, real_task, engine):
    task = arc_task(engine.tokenizer, max_examples=5)
    a = task.prepare(real_task, recipe(use_basic=True, use_size=True, learning_rate=2e-3, epochs=3))
    b = task.prepare(real_task, recipe(use_basic=True, use_size=True, learning_rate=2e-3, epochs=3))
    assert a.valid and [t.id for t in a.payload.tasks] == [t.id for t in b.payload.tasks]
    assert a.info["examples"] == 5 and a.info["steps"] == 3 * 3  # ceil(5 / batch 2) x 3 epochs
    # the leave-one-out originals come first; the test outputs of the real task are never used
    assert [t.id.split("|")[1] for t in a.payload.tasks[:2]] == ["identity", "identity"]
    assert all(real_task.test_outputs[0] not in t.all_grids() for t in a.payload.tasks)
    train = a.payload.train
    assert (train.learning_rate, train.epochs, train.batch_size, train.lr_scheduler) == (2e-3, 3, 2, "cosine")
    assert json.loads(json.dumps(a.info))["recipe"]["learning_rate"] == 2e-3


INVALID = {
    "not JSON": ("I would rotate the grids and train for a while.", "no JSON object"),
    "missing field": (json.dumps({k: v for k, v in json.loads(recipe()).items() if k != "loss"}), "missing field"),
    "learning rate too high": (recipe(learning_rate=0.5), "learning_rate"),
    "zero epochs": (recipe(epochs=0), "epochs 0 outside"),
    "over budget": (recipe(use_basic=True, use_chain=True, epochs=10), "over budget"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_or_over_budget_recipes_are_never_trained(case, engine, real_task, monkeypatch):
    completion, needle = INVALID[case]
    task = arc_task(engine.tokenizer, max_training_steps=50)
    prepared = task.prepare(real_task, completion)
    assert not prepared.valid and needle in prepared.reason and prepared.payload is None
    json.dumps(prepared.info)  # recordable

    engine.reset(seed=3)
    before = engine.adapter_state()
    calls = []
    monkeypatch.setattr(engine, "train", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(engine, "reset", lambda *a, **k: calls.append(a))
    assert task.score(engine, real_task, prepared, seed=0) == 0.0
    assert not calls
    after = engine.adapter_state()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="invalid self-edit"):
        task.adapt_and_predict(engine, real_task, prepared, seed=0)


def test_too_long_examples_are_dropped_and_counted(engine, real_task):
    lengths = [len(e.input_ids) for e in arc_task(engine.tokenizer).prepare(real_task, recipe()).payload.examples(
        engine.tokenizer)]
    short = ArcFewShotTask(engine.tokenizer, ArcSettings(), TrainSettings(batch_size=2, max_length=min(lengths)))
    info = short.prepare(real_task, recipe()).info
    assert info["too_long"] == sum(n > min(lengths) for n in lengths) and info["examples"] == len(lengths) - info["too_long"]
    none_fit = ArcFewShotTask(engine.tokenizer, ArcSettings(), TrainSettings(batch_size=2, max_length=min(lengths) - 1))
    prepared = none_fit.prepare(real_task, recipe())
    assert not prepared.valid and "max_length" in prepared.reason


# ------------------------------------------------------------------------------------------ inner loop


def test_score_trains_and_predicts_for_real(engine, real_task):
    task = arc_task(engine.tokenizer, voting_transforms=2)
    assert task.baseline(engine, real_task) in (0.0, 1.0)
    prepared = task.prepare(real_task, recipe(use_basic=True, learning_rate=1e-3, epochs=1))
    assert task.score(engine, real_task, prepared, seed=0) in (0.0, 1.0)
    assert any(float(v.abs().sum()) > 0 for k, v in engine.adapter_state().items() if "lora_B" in k)
    stats, prediction = task.adapt_and_predict(engine, real_task, prepared, seed=0)
    assert stats.steps == prepared.info["steps"] and len(prediction.attempts) == 1


def test_a_learnable_task_is_solved_and_the_base_model_fails_it(engine):
    task = arc_task(engine.tokenizer, voting_transforms=8)
    assert task.baseline(engine, CONSTANT) == 0.0
    prepared = task.prepare(CONSTANT, recipe(learning_rate=1e-2, epochs=5))
    stats, prediction = task.adapt_and_predict(engine, CONSTANT, prepared, seed=0)
    assert stats.losses[-1] < stats.losses[0]
    assert prediction.attempts == [[g([3])]] and prediction.candidates == [8]
    assert task.score(engine, CONSTANT, prepared, seed=0) == 1.0


class FakeEngine:
    """Answers each prompt by applying `rule` to its query grid, except in the frames `garbage_in` says."""

    def __init__(self, tokenizer, rule, garbage_in=lambda grid: False):
        self.tokenizer, self.rule, self.garbage_in = tokenizer, rule, garbage_in
        self.budgets = []

    def generate(self, prompt_ids, *, max_new_tokens, batch_size, stop_at_newline):
        assert stop_at_newline is False
        self.budgets.append(max_new_tokens)
        out = []
        for ids in prompt_ids:
            text = self.tokenizer.decode(ids, skip_special_tokens=True).rsplit("Input:\n", 1)[1]
            rows = []
            for line in text.splitlines():
                if not line.strip().isdigit():
                    break
                rows.append(line.strip())
            grid = text_to_grid("\n".join(rows))
            out.append("no idea" if self.garbage_in(grid) else grid_to_text(self.rule(grid)))
        return out

    def reset(self, seed=None):
        pass


def recolor(grid):
    return tuple(tuple(2 if c == 1 else c for c in row) for row in grid)


ASYMMETRIC = ArcTask(
    "asym",
    (ArcExample(g([1, 0, 0], [0, 0, 5]), recolor(g([1, 0, 0], [0, 0, 5]))),),
    (g([1, 1, 0], [0, 0, 0]), g([0, 1], [5, 1], [0, 0])),
    (recolor(g([1, 1, 0], [0, 0, 0])), recolor(g([0, 1], [5, 1], [0, 0]))),
)


def test_predictions_are_mapped_back_before_voting(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["qwen2"])
    originals = set(ASYMMETRIC.test_inputs)
    # Only the rotated views get a correct answer: attempt 1 is right only if the rotation was undone.
    fake = FakeEngine(tok, recolor, garbage_in=lambda grid: grid in originals)
    task = arc_task(tok, voting_transforms=2)
    prediction = task.predict(fake, ASYMMETRIC)
    assert prediction.attempts == [[ASYMMETRIC.test_outputs[0]], [ASYMMETRIC.test_outputs[1]]]
    assert prediction.candidates == [1, 1]
    assert task.solved(ASYMMETRIC, prediction)
    assert fake.budgets == [max(output_chars(ASYMMETRIC, i) for i in (0, 1)) + 16]

    everywhere = task.predict(FakeEngine(tok, recolor), ASYMMETRIC)
    assert everywhere.candidates == [2, 2] and task.solved(ASYMMETRIC, everywhere)
    wrong = task.predict(FakeEngine(tok, lambda grid: grid), ASYMMETRIC)
    assert not task.solved(ASYMMETRIC, wrong)


def test_output_budget_follows_the_demonstrations():
    tiling = ArcTask("t", (ArcExample(g([1, 2]), g([1, 2, 1, 2])),), (g([1], [2], [3]),))
    # 1x2 -> 1x4 scales the 3x1 input to 3x2; the demonstrations' own 1x4 output widens the bound to 3x4
    assert output_chars(tiling, 0) == 3 * 4 + 3
    fixed = ArcTask("f", (ArcExample(g([1, 2], [3, 4]), g([5])), ArcExample(g([1, 2, 3]), g([5]))), (g([1] * 9),))
    assert output_chars(fixed, 0) == 2  # every output 1x1 whatever the input
    varying = ArcTask("v", (ArcExample(g([1, 2], [3, 4]), g([5])), ArcExample(g([1, 2, 3]), g([5, 5]))),
                      (g([1] * 7, [1] * 7),))
    assert output_chars(varying, 0) == 2 * 7 + 2  # no rule: the test input's shape joins the maximum
    assert output_chars(tiling, 0, sep=" ") == 3 * 7 + 3


# ------------------------------------------------------------------------------------------ teacher side


def test_prompt_shows_the_demonstrations_and_every_key(engine, real_task):
    text = arc_task(engine.tokenizer).prompt(real_task)
    assert all(grid_to_text(ex.input) in text and grid_to_text(ex.output) in text for ex in real_task.train)
    assert all(f'"{k}"' in text for k in FIELDS)


class ScriptedBackend:
    def __init__(self, *batches):
        self.batches = list(batches)
        self.calls = []

    def sample(self, prompts, settings, seeds):
        self.calls.append((len(prompts), settings.num_samples, seeds))
        texts = self.batches.pop(0)
        assert len(texts) == settings.num_samples
        return [[Sample(t, 7, True) for t in texts]]


def test_unparseable_drafts_are_redrawn_a_bounded_number_of_times(engine, real_task):
    task = arc_task(engine.tokenizer, resamples=2)
    gen = GenerationSettings(num_samples=3)
    over_budget = recipe(use_basic=True, use_chain=True, epochs=10)
    backend = ScriptedBackend(["junk", recipe(), over_budget], ["{still junk"], [recipe(epochs=2)])
    (slots,) = task.sample_self_edits(backend, [real_task], gen, [11])
    assert [s.attempts for s in slots] == [3, 1, 1]
    assert slots[0].text == recipe(epochs=2) and [r["text"] for r in slots[0].rejected] == ["junk", "{still junk"]
    assert slots[2].text == over_budget  # parses: the teacher's choice stands, and is recorded invalid
    assert [c[1] for c in backend.calls] == [3, 1, 1] and len({c[2][0] for c in backend.calls}) == 3

    hopeless = ScriptedBackend(["junk", "junk"], ["junk", "junk"], ["junk", "junk"])
    (slots,) = task.sample_self_edits(hopeless, [real_task], GenerationSettings(num_samples=2), [11])
    assert len(hopeless.calls) == 3 and all(s.attempts == 3 for s in slots)
    assert not any(task.prepare(real_task, s.text).valid for s in slots)


def test_construction_from_configs_and_bad_settings(engine):
    for cls in (AdaptConfig, TrainTeacherConfig):
        task = ArcFewShotTask.from_config(cls(), engine.tokenizer)
        assert task.name == "arc" and task.context_id(CONSTANT) == "constant"
    with pytest.raises(UserError, match="voting_transforms"):
        arc_task(engine.tokenizer, voting_transforms=9)
    with pytest.raises(UserError, match="fallback_recipe"):
        arc_task(engine.tokenizer, fallback_recipe=recipe(loss="everything"))
    assert arc_task(engine.tokenizer, fallback_recipe=recipe()).fallback.loss == "output"
