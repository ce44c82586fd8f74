"""The shipped recipe is what was chosen and evaluated: configs/knowledge_smollm2_recipe.yaml equals the benchmark's
frozen recipe, the teacher's student absorbs with it, and `make real` runs it."""

import sys
from pathlib import Path

from core.config import load_config
from pipeline.settings.adapt import AdaptConfig
from pipeline.settings import TrainTeacherConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs/knowledge_smollm2_recipe.yaml"


def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import real_recipe

    return real_recipe


def test_the_benchmark_evaluates_the_shipped_recipe():
    rr = bench()
    cfg = load_config(AdaptConfig, RECIPE)
    form, setting = rr.recipe()
    assert (cfg.mode, cfg.task, form) == ("per_document", "knowledge", "rewrite")
    assert cfg.self_edit.split == "lines" and cfg.self_edit.prefix_title and cfg.self_edit.include_passage
    lora, train, ev = cfg.student.lora, cfg.student.train, cfg.student.eval
    assert (lora.r, lora.alpha, tuple(lora.target_modules)) == (setting.r, setting.alpha, setting.targets)
    assert lora.dropout == 0.0
    assert (train.learning_rate, train.epochs, train.batch_size, train.lr_scheduler, train.objective) == \
        (setting.lr, setting.epochs, setting.batch_size, setting.scheduler, setting.objective)
    # The chosen setting is one the selection runs measured, not a new one.
    assert setting in rr.SETTINGS.values()
    assert (ev.qa_prompt, ev.open_book_prompt, ev.max_new_tokens) == (rr.QA_PROMPT, rr.OPEN_PROMPT, rr.MAX_NEW_TOKENS)
    assert (ev.answer_until, ev.metric, ev.open_book) == ("turn", "contains_numeric", True)


def assert_absorbs_like(cfg, recipe):
    """The same self-edit form, LoRA, training and answer reading as the recipe."""
    assert cfg.self_edit == recipe.self_edit
    assert (cfg.student.lora, cfg.student.train) == (recipe.student.lora, recipe.student.train)
    for field in ("max_new_tokens", "metric", "answer_until", "qa_prompt"):
        assert getattr(cfg.student.eval, field) == getattr(recipe.student.eval, field)


def test_the_real_teacher_trains_for_a_student_that_absorbs_with_the_recipe():
    recipe = load_config(AdaptConfig, RECIPE)
    teacher = load_config(TrainTeacherConfig, ROOT / "configs/teacher_smollm2_cpu.yaml")
    assert_absorbs_like(teacher, recipe)


def test_make_real_runs_the_recipe_and_prints_answers():
    real = (ROOT / "Makefile").read_text().split("\nreal:", 1)[1].split("\n\n", 1)[0]
    assert "configs/knowledge_smollm2_recipe.yaml" in real and "--answers" in real
    assert "pipeline/data/sample_docs.jsonl" in real


def test_the_real_models_store_absorbs_with_the_recipe():
    from pipeline.store.config import StoreConfig

    recipe = load_config(AdaptConfig, RECIPE)
    store = load_config(StoreConfig, ROOT / "configs/store_smollm2_cpu.yaml")
    assert_absorbs_like(store, recipe)
