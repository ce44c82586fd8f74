"""The embedded synthetic world: generator, tokenizer, and the cached build of its student and teacher."""

import random

import pytest

from pipeline.world.generator import (
    DOC_TEMPLATES,
    FACTS,
    SPLITS,
    STYLES,
    WorldSpec,
    analyse_self_edit,
    make_world,
)
from tests.conftest import SMALL_WORLD_SIZES

SMALL = WorldSpec(**SMALL_WORLD_SIZES)


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = make_world(3, SMALL), make_world(3, SMALL), make_world(4, SMALL)
    assert a.people == b.people and a.records("heldout") == b.records("heldout")
    assert a.people != c.people


def test_splits_never_share_a_person_or_a_name():
    w = make_world(0)
    names = {s: {p.name for p in w.people[s]} for s in SPLITS}
    assert sum(len(v) for v in names.values()) == len(set().union(*names.values()))
    assert [len(w.people[s]) for s in SPLITS] == [w.spec.n_pretrain, w.spec.n_rl, w.spec.n_heldout]
    # Names never collide with the other vocabularies either (a name that is also a city would be ambiguous).
    others = set(w.cities) | set(w.companies) | set(w.professions) | set(w.years)
    assert not others & set(w.all_names())


def test_siblings_are_pairs_inside_a_split():
    w = make_world(0, SMALL)
    for split in SPLITS:
        in_split = {p.name: p for p in w.people[split]}
        for p in w.people[split]:
            assert p.sibling in in_split and in_split[p.sibling].sibling == p.name and p.sibling != p.name


def test_every_answer_is_stated_in_its_document():
    w = make_world(1)
    for split in SPLITS:
        for rec, p in zip(w.records(split), w.people[split]):
            words = rec["context"].split()
            assert rec["title"] == p.name and p.name in words
            assert len(rec["questions"]) == len(FACTS)
            for qa in rec["questions"]:
                assert qa["answer"] in words, (qa, rec["context"])
                assert p.name in qa["question"].split()


def test_every_template_states_every_fact_once_and_every_template_is_used():
    w = make_world(0)
    for t in range(len(DOC_TEMPLATES)):
        p = w.people["rl"][t % len(w.people["rl"])]
        words = w.document(p, t).split()
        sib = w.by_name[p.sibling]
        for k in FACTS:
            if k != "sibling":
                assert p.fact(k) in words and sib.fact(k) in words
    used = {w.canonical_template(p) for s in SPLITS for p in w.people[s]}
    assert len(used) == len(DOC_TEMPLATES)


@pytest.mark.parametrize("style", STYLES)
def test_gold_self_edits_analyse_as_their_style(style):
    w = make_world(0, SMALL)
    rng = random.Random(0)
    for p in w.people["heldout"]:
        text = w.self_edit(p, style, rng)
        got = analyse_self_edit(text, p)
        assert got["well_formed"] and got["wrong"] == 0
        assert got["style"] == style
        if style in ("qa", "facts"):
            assert got["stated"] == sorted(FACTS)
        elif style == "partial":
            assert 1 <= len(got["stated"]) <= 2
        else:
            assert got["stated"] == []


def test_analysis_catches_wrong_values_and_garbage():
    w = make_world(0, SMALL)
    p, q = w.people["heldout"][:2]
    wrong = f"Question : In what year was {p.name} born ? Answer : {q.year if q.year != p.year else '1899'}"
    got = analyse_self_edit(wrong, p)
    assert got["wrong"] == 1 and got["stated"] == [] and got["well_formed"]
    other = f"Question : In what year was {q.name} born ? Answer : {p.year}"
    assert analyse_self_edit(other, p)["wrong"] == 1
    assert not analyse_self_edit("born the the in", p)["well_formed"]
    assert analyse_self_edit("", p)["style"] == "empty"


def test_tokenizer_round_trips_every_world_text_without_unknowns(tmp_path):
    from transformers import AutoTokenizer

    from pipeline.world.pretrain import QA_PROMPT, TEACHER_PROMPT
    from pipeline.world.tokenizer import build_tokenizer

    w = make_world(0, SMALL)
    build_tokenizer(w.vocabulary_text()).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.eos_token and tok.pad_token and tok.eos_token_id != tok.pad_token_id
    rng = random.Random(0)
    texts = []
    for p in w.people["heldout"] + w.people["pretrain"][:4]:
        texts.append(TEACHER_PROMPT.format(title=p.name, passage=w.document(p)))
        texts += [w.self_edit(p, s, rng) for s in STYLES]
        texts += [QA_PROMPT.format(question=q) + " " + a for q, a in w.questions(p)]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert " ".join(tok.decode(ids).split()) == " ".join(text.split())
        assert tok(tok.decode(ids))["input_ids"] == ids
    # Punctuation and newlines are tokens of their own, however the user spaces a prompt.
    assert tok("Question: When was X born?")["input_ids"] == tok("Question : When was X born ?")["input_ids"]
    assert tok.convert_tokens_to_ids("\n") in tok("a\nb")["input_ids"]


def test_copy_targets_point_at_the_prompt_words_being_copied(tmp_path):
    from pipeline.world.pretrain import IGNORE, TEACHER_PROMPT, content_ids, copy_targets, encode, teacher_example
    from pipeline.world.tokenizer import build_tokenizer

    w = make_world(0, SMALL)
    tok = build_tokenizer(w.vocabulary_text())
    content = content_ids(w, tok)
    rng = random.Random(0)
    n_targets = 0
    for _ in range(50):
        prompt, completion = teacher_example(w, rng, w.all_names(), {"qa": 1.0})
        assert prompt.startswith(TEACHER_PROMPT.split("{")[0])
        ids, labels = encode(tok, prompt, completion)
        prompt_len = labels.index(next(l for l in labels if l != IGNORE))
        targets = copy_targets(ids, labels, content)
        # Every name and value of a QA self-edit is copied: 5 names + 5 answers.
        assert len(targets) == 2 * len(FACTS)
        for q, keys in targets:
            assert q + 1 >= prompt_len and keys and all(k < prompt_len and ids[k] == ids[q + 1] for k in keys)
        n_targets += len(targets)
    assert n_targets == 50 * 2 * len(FACTS)


@pytest.mark.parametrize("parallel", [False, True])
def test_build_world_models_builds_once_then_reuses_the_cache(tmp_path, parallel, tiny_world_recipe):
    import json
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.world import VERSION, WorldRecipe, build_world_models, world_dir
    from pipeline.world.pretrain import TEACHER_PROMPT

    recipe = tiny_world_recipe
    wm = build_world_models(tmp_path, seed=3, recipe=recipe, parallel=parallel)
    assert wm.root == world_dir(tmp_path, 3, recipe) and wm.manifest["seed"] == 3
    assert world_dir(tmp_path, 3) != wm.root and world_dir(tmp_path, 3).name == f"world-v{VERSION}-seed3"
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    world = make_world(3, SMALL)
    for split in SPLITS:
        assert json.loads(wm.data[split].read_text()) == world.records(split)

    for path in (wm.student, wm.teacher):
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        assert type(model).__name__ == "LlamaForCausalLM"
        assert tok.eos_token_id == model.generation_config.eos_token_id and tok.pad_token_id is not None
        p = world.people["heldout"][0]
        ids = tok(TEACHER_PROMPT.format(title=p.name, passage=world.document(p)), return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
        assert out.shape[1] > ids["input_ids"].shape[1]
    assert AutoModelForCausalLM.from_pretrained(wm.teacher).config.tie_word_embeddings

    t0 = time.perf_counter()
    again = build_world_models(tmp_path, seed=3, recipe=recipe)
    assert time.perf_counter() - t0 < 1.0 and again.root == wm.root
    assert WorldRecipe().key() == "" and recipe.key() != ""
    # The parallel workers receive the recipe as JSON (nothing is unpickled): it must come back identical.
    for r in (recipe, WorldRecipe()):
        assert WorldRecipe.from_json(r.to_json()) == r


@pytest.mark.slow
def test_default_world_shows_both_effects(default_world):
    """The measured demo world: the teacher copies names and values from a passage it never saw, and the
    student absorbs a QA self-edit far better than the passage.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.world.pretrain import IGNORE, collate, encode

    torch.manual_seed(0)
    wm = default_world
    world = make_world(0)
    people = world.people["heldout"][:12]
    rng = random.Random(0)

    teacher = AutoModelForCausalLM.from_pretrained(wm.teacher).eval()
    tok = AutoTokenizer.from_pretrained(wm.teacher)
    hits = total = 0
    for p in people:
        ids, labels = encode(tok, wm.teacher_prompt.format(title=p.name, passage=world.document(p)),
                             world.self_edit(p, "qa", rng))
        with torch.no_grad():
            pred = teacher(input_ids=torch.tensor([ids])).logits[0].argmax(-1)
        words = set(tok.convert_tokens_to_ids([p.name, *p.facts().values()]))
        for j in range(1, len(ids)):
            if labels[j] != IGNORE and ids[j] in words:
                hits += int(pred[j - 1] == ids[j])
                total += 1
    assert hits / total > 0.95

    student = AutoModelForCausalLM.from_pretrained(wm.student)
    tok = AutoTokenizer.from_pretrained(wm.student)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(student, LoraConfig(r=8, lora_alpha=16, target_modules=targets))

    def accuracy_after(texts_of):
        right = 0
        for i, p in enumerate(people):
            torch.manual_seed(i)
            for m in model.modules():
                if isinstance(m, LoraLayer):
                    m.reset_lora_parameters("default", True)
            ids, mask, labels = collate([encode(tok, t, None) for t in texts_of(p)], tok.pad_token_id)
            opt = torch.optim.Adam([w for n, w in model.named_parameters() if "lora_" in n], lr=3e-3)
            model.train()
            for _ in range(40):
                model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
                opt.step()
                opt.zero_grad()
            model.eval()
            for q, a in world.questions(p):
                enc = tok(wm.qa_prompt.format(question=q), return_tensors="pt")
                with torch.no_grad():
                    out = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
                got = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).split("\n")[0]
                right += got.strip() == a
        return right / (len(people) * len(FACTS))

    raw = accuracy_after(lambda p: [world.document(p)])
    qa = accuracy_after(lambda p: world.self_edit(p, "qa", rng).split("\n"))
    # The world is bit-for-bit reproducible on one machine, not across machines (most likely their float kernels):
    # on an AMD EPYC (AVX2) machine the same seed gives qa 0.783, raw 0.267, where an earlier machine gave qa > 0.8.
    # The effect this guards, QA far above the passage, holds on both.
    assert qa > 0.7 and qa > 2 * raw, (qa, raw)
