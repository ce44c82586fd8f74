"""The longer and chain-of-thought self-edit prompts, the reasoning strip and the per-completion sequence cap."""

import dataclasses

import pytest

from core.config import SelfEditSettings, load_config
from core.errors import UserError
from pipeline.documents import Document
from pipeline.settings import AdaptConfig
from pipeline.tasks.knowledge import KnowledgeTask, split_self_edit, split_self_edit_report, training_texts
from teacher.prompts import TEMPLATES, load_template, render

NEW = ("long_implications", "very_long_implications", "implications_cot")


@pytest.mark.parametrize("name", NEW)
def test_new_templates_load_and_render(name):
    template = load_template(name)
    assert template is TEMPLATES[name]
    text = render(template, title="Otters", passage="Otters hold hands while they sleep.")
    assert "Title: Otters" in text and "Otters hold hands while they sleep." in text
    assert "{" not in text


def test_cot_template_asks_for_the_marker():
    text = TEMPLATES["implications_cot"]
    assert text.rstrip().endswith("Reasoning:") and "Implications:" in text


def cot(**kw):
    return SelfEditSettings(prompt="implications_cot", **kw)


def test_cot_strip_keeps_only_text_after_the_last_marker():
    completion = (
        "The passage is about otters. Implications: they are social.\n"
        "So the list should mention sleep.\n"
        "IMPLICATIONS:\n"
        "- Otters hold hands while sleeping.\n"
        "- Holding hands keeps otters from drifting apart.\n"
    )
    pieces, report = split_self_edit_report(completion, cot())
    assert pieces == ["Otters hold hands while sleeping.", "Holding hands keeps otters from drifting apart."]
    assert report == {"sequences": 2, "dropped_over_cap": 0, "reasoning_stripped": True, "marker_missing": False}


def test_cot_without_marker_is_kept_whole_and_marked():
    completion = "Otters hold hands while sleeping.\nThey live in kelp forests."
    pieces, report = split_self_edit_report(completion, cot())
    assert pieces == completion.splitlines()
    assert report["reasoning_stripped"] is False and report["marker_missing"] is True


def test_other_prompts_do_not_strip_unless_asked():
    completion = "Implications: first line here.\nImplications:\nsecond line here."
    plain = SelfEditSettings()  # prompt=implications, strip_reasoning=auto
    unstripped = ["Implications: first line here.", "Implications:", "second line here."]
    assert split_self_edit(completion, plain) == unstripped
    forced = SelfEditSettings(strip_reasoning="always")
    assert split_self_edit(completion, forced) == ["second line here."]
    never = cot(strip_reasoning="never")
    assert split_self_edit(completion, never) == split_self_edit(completion, plain)


def forty_five():
    return "\n".join(f"{i + 1}. Implication number {i + 1} of the passage." for i in range(45))


def test_cap_cuts_45_lines_to_30_and_reports_15_dropped():
    pieces, report = split_self_edit_report(forty_five(), SelfEditSettings())
    assert len(pieces) == 30 and pieces[0] == "Implication number 1 of the passage."
    assert pieces[-1] == "Implication number 30 of the passage."
    assert report == {"sequences": 30, "dropped_over_cap": 15, "reasoning_stripped": False, "marker_missing": False}
    assert len(split_self_edit(forty_five(), SelfEditSettings(max_sequences=0))) == 45  # 0: no cap


def test_cap_counts_sequences_after_min_chars_filter():
    completion = "\n".join(["short"] * 40 + [f"a long enough line {i}" for i in range(5)])
    assert len(split_self_edit(completion, SelfEditSettings(max_sequences=3))) == 3


def test_training_texts_and_prepare_apply_the_cap():
    doc = Document("d", "Otters", "Otters hold hands.")
    settings = SelfEditSettings()
    texts = training_texts(doc, [forty_five()], settings)
    assert len(texts) == 31 and texts[-1] == "Otters\nOtters hold hands."  # 30 + the passage
    task = KnowledgeTask.__new__(KnowledgeTask)  # prepare needs only the self-edit settings
    task.self_edit = settings
    prepared = task.prepare(doc, forty_five())
    assert prepared.valid and len(prepared.payload) == 31
    assert prepared.info == {"sequences": 30, "dropped_over_cap": 15, "reasoning_stripped": False,
                             "marker_missing": False}
    empty = task.prepare(doc, "x")
    assert not empty.valid and empty.info["sequences"] == 0


def test_defaults_keep_the_old_behaviour():
    s = SelfEditSettings()
    assert (s.prompt, s.strip_reasoning, s.max_sequences) == ("implications", "auto", 30)


def test_negative_cap_is_a_user_error_at_config_load():
    with pytest.raises(UserError, match="self_edit.max_sequences"):
        load_config(AdaptConfig, overrides=["self_edit.max_sequences=-1"])
    with pytest.raises(UserError, match="max_sequences"):
        SelfEditSettings(max_sequences=-3)
    with pytest.raises(UserError):
        dataclasses.replace(SelfEditSettings(), max_sequences=-1)
    assert load_config(AdaptConfig, overrides=["self_edit.max_sequences=0"]).self_edit.max_sequences == 0
    with pytest.raises(UserError, match="strip_reasoning"):
        load_config(AdaptConfig, overrides=["self_edit.strip_reasoning=sometimes"])
