"""Answers read whole for chat students, the open-book ceiling, and the figures drawn from it."""

import json

import pytest

from core.config import EvalSettings, LoraSettings, ModelSettings, SelfEditSettings, TrainSettings
from pipeline.documents import Document, Question
from pipeline.tasks import knowledge


@pytest.fixture(scope="module")
def engine(tiny_models):
    from student.engine import StudentEngine

    return StudentEngine(ModelSettings(path=str(tiny_models["llama"])), LoraSettings(r=4, alpha=8))


def test_a_turn_is_the_whole_greedy_reply_and_a_line_is_its_first_line(engine):
    from student.engine import first_line, whole_turn

    prompts = ["Where is the bridge?", "Who was the mayor of Velmora in 1887?", "What is sold in spring?"]
    raw = engine.generate(engine.encode_prompts(prompts), max_new_tokens=40, stop_at_newline=False)
    turn = engine.reply(prompts, max_new_tokens=40, until="turn")
    line = engine.reply(prompts, max_new_tokens=40, until="line")
    assert turn == [whole_turn(r) for r in raw]
    # Greedy decoding: the line reading is the same continuation, stopped at its first newline.
    assert line == [first_line(r) for r in raw]
    assert all("\n" not in t for t in turn)
    assert any(len(t) > len(x) for t, x in zip(turn, line)) or all("\n" not in r.strip() for r in raw)


def test_auto_reads_a_turn_through_a_chat_template_and_a_line_without(engine):
    assert engine.reply_until("auto", "auto") == "turn"  # the tiny models carry a chat template
    assert engine.reply_until("never", "auto") == "line"  # the synthetic world's students answer raw: unchanged
    assert engine.reply_until("never", "turn") == "turn"
    with pytest.raises(ValueError):
        engine.reply_until("auto", "sentence")


@pytest.fixture(scope="module")
def plain_engine(tiny_models, tmp_path_factory):
    """The tiny llama without its chat template: a student that answers raw prompts, as the synthetic world's do."""
    import shutil

    from student.engine import StudentEngine

    path = tmp_path_factory.mktemp("plain") / "llama"
    shutil.copytree(tiny_models["llama"], path)
    (path / "chat_template.jinja").unlink()
    return StudentEngine(ModelSettings(path=str(path)), LoraSettings(r=4, alpha=8))


def test_the_auto_metric_follows_how_the_student_is_read(engine, plain_engine):
    """benchmarks/grader_check: contains_numeric grades whole chat turns best; one-line answers keep token_f1."""
    ev = EvalSettings()
    assert ev.metric == "auto"
    assert plain_engine.reply_until(ev.use_chat_template, ev.answer_until) == "line"
    assert knowledge.resolve_metric(ev, engine).metric == "contains_numeric"
    assert knowledge.resolve_metric(ev, plain_engine).metric == "token_f1"
    assert knowledge.Grader(ev, engine=engine).metric == "contains_numeric"
    assert knowledge.Grader(ev, engine=plain_engine).metric == "token_f1"
    # A chat student read by its first line (or answering raw prompts) is graded as before.
    assert knowledge.resolve_metric(EvalSettings(answer_until="line"), engine).metric == "token_f1"
    assert knowledge.resolve_metric(EvalSettings(use_chat_template="never"), engine).metric == "token_f1"
    # The tokenizer alone says the same (for what reports the metric with no student loaded).
    assert knowledge.resolve_metric(ev, tokenizer=engine.tokenizer).metric == "contains_numeric"
    assert knowledge.metric_name(ev, engine.settings) == "contains_numeric"
    task = knowledge.KnowledgeTask(SelfEditSettings(), TrainSettings(epochs=1), ev)
    assert task.grader_for(plain_engine).metric == "token_f1" and task.grader_for(engine).metric == "contains_numeric"
    doc = Document(id="d", title="Velmora", text="The bridge has two arches.",
                   questions=[Question("How many arches has the bridge?", ("2",))])
    results = knowledge.evaluate(engine, [doc], EvalSettings(max_new_tokens=4), task.grader_for(engine))
    assert "contains_numeric" in results[0].metrics
    assert results[0].score == results[0].metrics["contains_numeric"]


def test_an_explicit_metric_is_kept_and_auto_is_not_guessed_without_a_student(engine, plain_engine):
    for metric in ("token_f1", "contains", "exact_match", "contains_numeric"):
        ev = EvalSettings(metric=metric)
        assert knowledge.resolve_metric(ev, engine) is ev and knowledge.resolve_metric(ev, plain_engine) is ev
        assert knowledge.Grader(ev, engine=engine).metric == metric
        assert knowledge.Grader(ev).metric == metric  # no student needed
        assert knowledge.KnowledgeTask(SelfEditSettings(), TrainSettings(), ev).grader.metric == metric
    with pytest.raises(ValueError, match="engine"):
        knowledge.Grader(EvalSettings())
    with pytest.raises(ValueError, match="auto"):
        knowledge.KnowledgeTask(SelfEditSettings(), TrainSettings(), EvalSettings()).grader
    with pytest.raises(ValueError, match="auto"):
        knowledge.resolve_metric(EvalSettings())


def test_whole_turn_keeps_the_answer_after_a_preamble_line():
    from student.engine import first_line, whole_turn

    reply = "The answer to this question is:\n\nParis, the capital.\n"
    assert first_line(reply) == "The answer to this question is:"
    assert whole_turn(reply) == "The answer to this question is: Paris, the capital."
    assert knowledge.is_preamble_only(first_line(reply)) and not knowledge.is_preamble_only(whole_turn(reply))


def test_open_book_prompts_carry_the_passage_and_preamble_replies_are_counted(engine):
    doc = Document(id="d", title="Velmora", text="The old bridge in Velmora is made of grey stone. " * 4,
                   questions=[Question("What is the bridge made of?", ("grey stone",))])
    ev = EvalSettings(max_new_tokens=8, metric="contains")
    grader = knowledge.Grader(ev)
    closed = knowledge.evaluate(engine, [doc], ev, grader)
    closed_tokens = engine.last_generation.prompt_tokens[0]
    opened = knowledge.evaluate(engine, [doc], ev, grader, open_book=True)
    assert engine.last_generation.prompt_tokens[0] > closed_tokens + 30
    assert "preamble_only" in closed[0].metrics and "preamble_only" in opened[0].metrics
    raw = knowledge.evaluate(engine, [doc], EvalSettings(max_new_tokens=8, use_chat_template="never"), grader)
    assert "preamble_only" not in raw[0].metrics  # line-read students keep today's records


def _results(scores: dict[str, list[float]]):
    return [knowledge.QuestionResult(d, f"{d}-q{i}", ["x"], "", s) for d, ss in scores.items()
            for i, s in enumerate(ss)]


def test_ceiling_ratio_is_a_ratio_of_macro_averages_and_kept_share_is_pooled():
    from pipeline.tasks.ceiling import ceiling_report

    closed = _results({"a": [1, 0, 0, 0], "b": [1, 1]})
    opened = _results({"a": [1, 1, 0, 0], "b": [0, 1]})
    rep = ceiling_report(closed, opened)
    # macro: closed (0.25 + 1.0) / 2, open (0.5 + 0.5) / 2
    assert rep["closed_book"] == pytest.approx(0.625) and rep["open_book"] == pytest.approx(0.5)
    assert rep["ceiling_ratio"]["mean"] == pytest.approx(1.25)
    # right open-book: a-q0, a-q1, b-q1 (3); also right closed-book: a-q0, b-q1 (2). b-q0 is a closed-book hit
    # the model misses with the passage in view: it raises the ratio, not the share.
    assert rep["kept_share"]["mean"] == pytest.approx(2 / 3)
    assert rep["right_open_book"] == 3 and rep["right_both"] == 2
    lo, hi = rep["kept_share"]["low"], rep["kept_share"]["high"]
    assert 0 <= lo <= rep["kept_share"]["mean"] <= hi <= 1
    with pytest.raises(ValueError):
        ceiling_report(closed, opened[:-1])


def test_qa_split_keeps_each_question_with_its_answer():
    from core.config import SelfEditSettings

    qa = SelfEditSettings(split="qa")
    spaced = "Where was the port?\n\nAnswer:  Piraeus\n\nQuestion 2:  For how long?\n\nAnswer:  1854-1857"
    tight = "Who ruled?\nAnswer 1: King Otto.\n\nQuestion 2: When?\nAnswer 2: In 1854."
    assert knowledge.split_self_edit(spaced, qa) == ["Where was the port?\nAnswer:  Piraeus",
                                                     "Question 2:  For how long?\nAnswer:  1854-1857"]
    assert knowledge.split_self_edit(tight, qa) == ["Who ruled?\nAnswer 1: King Otto.", "Question 2: When?\nAnswer 2: In 1854."]


def test_adapt_student_reports_the_ceiling(tiny_models, tmp_path, capsys):
    from pipeline.cli import main

    docs = tmp_path / "d.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "title": "Velmora", "text": t,
                                        "questions": [{"question": "What is the bridge made of?", "answer": "stone"}]})
                            + "\n" for i, t in enumerate(["The bridge is made of stone.", "The market sells wool."])))
    edits = tmp_path / "e.jsonl"
    edits.write_text("".join(json.dumps({"document": f"d{i}", "completion": "A fact about Velmora."}) + "\n"
                             for i in range(2)))
    with pytest.raises(SystemExit) as done:
        main(["adapt-student", "--docs", str(docs), "--edits", str(edits), "--student", str(tiny_models["qwen2"]),
              "--output", str(tmp_path / "run"), "--quiet", "--set", "student.train.epochs=1",
              "--set", "student.eval.max_new_tokens=6", "--set", "student.eval.open_book=true", "--answers"])
    out, err = capsys.readouterr()
    assert done.value.code == 0, err
    report = json.loads((tmp_path / "run/report.json").read_text())
    # Printed: each question's replies as the report holds them, the right counts, the ceiling and the kept share.
    q = report["questions"][0]
    assert f"   before [{'right' if q['score_before'] >= 0.5 else 'wrong'}]: {q['before']}" in out.splitlines()
    assert f"   after  [{'right' if q['score_after'] >= 0.5 else 'wrong'}]: {q['after']}" in out.splitlines()
    assert out.count("Q: What is the bridge made of?  (gold: stone)") == 2
    right = sum(x["score_after"] >= 0.5 for x in report["questions"])
    assert f"before, {right} after)" in out
    c = report["ceiling"]
    assert f"open book (the ceiling): {c['open_book']:.3f}  closed book after: {c['closed_book']:.3f}" in out
    assert f"kept share: {c['right_both']} of the {c['right_open_book']} questions right open book" in out
    assert report["open_book"]["questions"] == 2 and report["ceiling"]["documents"] == 2
    assert {"ceiling_ratio", "kept_share", "open_book", "closed_book"} <= set(report["ceiling"])
    # metric "auto" (the default), named as it was resolved: the tiny qwen2 answers through its chat template
    assert report["metric"] == "contains_numeric" and report["before"]["contains_numeric"] is not None


def test_the_quick_starts_sample_documents_and_questions_are_frozen():
    """`make real` is judged on these 9 questions: its recipe was chosen on other passages, so the file may not
    change to suit it."""
    import hashlib
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "pipeline/data/sample_docs.jsonl"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == \
        "187255d473ee7ba1a3480d880a663d1f75f76527b13c91f5e7ed0b51823d57eb"
    assert sum(len(json.loads(line)["questions"]) for line in path.read_text().splitlines()) == 9


def test_pair_questions_and_exchanges_answered_with_the_passage_in_view(engine):
    from core.config import SelfEditSettings

    pairs = knowledge.split_self_edit("Question 1: Where is the bridge?\nAnswer 1: In Velmora.\n\n"
                                      "What is it made of?\n\nAnswer: Grey stone.\n\nA plain sentence here.",
                                      SelfEditSettings(split="qa"))
    assert knowledge.pair_questions(pairs) == ["Where is the bridge?", "What is it made of?"]
    doc = Document(id="d", title="Velmora", text="The old bridge in Velmora is made of grey stone.")
    ev = EvalSettings(max_new_tokens=6)
    engine.reset()
    texts = knowledge.exchanges(engine, doc, ["Where is the bridge?"], ev)
    opened = engine.reply([ev.open_book_prompt.format(passage="Velmora\n" + doc.text, question="Where is the bridge?")],
                          max_new_tokens=6, until="turn")[0]
    assert len(texts) == (1 if opened else 0)
    if texts:  # the closed-book turn, answered as the model answers with the passage in view
        assert "Question: Where is the bridge?" in texts[0] and opened in texts[0] and "grey stone" not in texts[0]
