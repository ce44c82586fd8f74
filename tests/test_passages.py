"""The token-aware document splitter: passages fit, nothing is dropped, overlaps come from the previous passage."""

import random
import re
import time

import pytest

from core.errors import UserError
from pipeline.documents import Document, Question
from pipeline.passages import plan_document, split_spans, split_text, token_counter


def words_counter(text: str) -> int:
    """A cheap, non-additive counter: 1.3 tokens a word, rounded up."""
    return -(-len(text.split()) * 13 // 10)


def seams_counter(text: str) -> int:
    """Words plus one token per line break: pieces counted apart miss the breaks between them, so joined passages
    come out over their summed estimate -- the case a real tokenizer creates at every seam."""
    return len(text.split()) + text.count("\n")


def make_text(seed=0, paragraphs=40) -> str:
    rng = random.Random(seed)
    vocab = "otters hold hands while sleeping kelp forests keep them from drifting apart at sea".split()

    def sentence():
        end = rng.choice([".", "!", "?", '."'])
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(2, 30))).capitalize() + end

    paras = [" ".join(sentence() for _ in range(rng.randint(1, 15))) for _ in range(paragraphs)]
    paras.append(" ".join(rng.choice(vocab) for _ in range(300)))  # one sentence longer than any passage
    paras.append("line one of a list\nline two of a list\n  indented line three")
    return "\n\n".join(paras) + "\n"


def bodies(text, spans):
    return [text[s.body_start : s.end] for s in spans]


def check(text, count, max_tokens, overlap):
    spans = split_spans(text, count, max_tokens, overlap)
    passages = split_text(text, count, max_tokens, overlap)
    assert passages == [text[s.start : s.end] for s in spans]
    assert all(count(p) <= max_tokens for p in passages)
    assert [s.tokens for s in spans] == [count(p) for p in passages]
    # No text dropped: the new parts follow each other with only whitespace between, covering every word.
    assert " ".join(bodies(text, spans)).split() == text.split()
    assert text[: spans[0].body_start].strip() == "" and text[spans[-1].end :].strip() == ""
    for prev, cur in zip(spans, spans[1:]):
        assert text[prev.end : cur.body_start].strip() == ""
        # The overlap is the end of the previous passage's new text, whole words, at most half the budget.
        assert prev.body_start <= cur.start <= cur.body_start
        assert text[prev.body_start : prev.end].endswith(text[cur.start : prev.end])
        assert cur.start == cur.body_start or text[cur.start - 1].isspace()
        assert cur.overlap_tokens <= min(overlap, max_tokens // 2)
    assert spans[0].overlap_tokens == 0 and spans[0].start == spans[0].body_start
    return spans


@pytest.mark.parametrize("count", [words_counter, seams_counter], ids=["words", "seams"])
@pytest.mark.parametrize("max_tokens,overlap", [(40, 0), (40, 10), (100, 30), (7, 100), (3, 1)])
def test_passages_fit_and_keep_every_word(count, max_tokens, overlap):
    text = make_text()
    spans = check(text, count, max_tokens, overlap)
    assert len(spans) > 1
    if min(overlap, max_tokens // 2) >= 2:  # room for one word under either counter
        assert any(s.overlap_tokens > 0 for s in spans)
    else:  # (3, 1): a word costs 2 tokens under words_counter, so there is no whole word to repeat
        assert all(s.overlap_tokens <= 1 for s in spans)


def test_overlap_is_about_the_requested_size():
    spans = check(make_text(1), words_counter, 200, 40)
    overlaps = [s.overlap_tokens for s in spans[1:]]
    assert max(overlaps) <= 40 and sum(overlaps) / len(overlaps) > 10


def test_long_paragraphs_are_cut_at_sentence_ends():
    sentences = [f"Sentence number {i} says that otters hold hands." for i in range(200)]
    text = " ".join(sentences)  # one paragraph, far over the budget
    spans = check(text, words_counter, 50, 0)
    assert all(text[s.start : s.end].endswith(".") for s in spans)
    assert all(text[s.start : s.end].startswith("Sentence number") for s in spans)


def test_a_word_longer_than_the_budget_is_cut_by_characters():
    text = "short start. " + "x" * 5000 + " short end."
    count = lambda t: len(t) // 10 + 1  # noqa: E731 - characters matter here
    spans = split_spans(text, count, 20, 0)
    assert all(count(text[s.start : s.end]) <= 20 for s in spans)
    assert re.sub(r"\s+", "", "".join(bodies(text, spans))) == re.sub(r"\s+", "", text)


def test_a_text_that_fits_comes_back_unchanged():
    text = "  Title line\n\nOtters hold hands.   \n\n"
    assert split_text(text, words_counter, 100, 10) == [text]
    assert split_text("", words_counter, 5) == [""]
    assert split_text("   \n\n  ", words_counter, 5) == ["   \n\n  "]


def test_deterministic():
    text = make_text(2)
    assert split_spans(text, seams_counter, 60, 15) == split_spans(text, seams_counter, 60, 15)


@pytest.mark.parametrize("bad", [dict(max_tokens=0), dict(max_tokens=-5), dict(max_tokens=10, overlap_tokens=-1),
                                 dict(max_tokens=2.5)])
def test_bad_budgets_are_user_errors(bad):
    with pytest.raises(UserError):
        split_text("some text here", words_counter, **bad)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_real_tokenizer_never_over(tiny_models, arch):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models[arch])
    fast = token_counter(tok)
    plain = lambda t: len(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731 - no batch form
    unicode = "Unicode: caf\u00e9 na\u00efve \u2014 \u00fcber \u65e5\u672c\u8a9e\u3067\u3059\u3002 "
    text = make_text(3, paragraphs=15) + "\n\n" + unicode * 5
    for sample in text.split("\n\n")[:10]:
        assert fast(sample) == plain(sample)
    assert fast.many(["a b", "otters"]) == [plain("a b"), plain("otters")]
    for max_tokens, overlap in [(64, 0), (64, 16), (200, 50), (24, 4)]:
        spans = check(text, fast, max_tokens, overlap)
        assert all(plain(text[s.start : s.end]) <= max_tokens for s in spans)
    assert split_text(text, plain, 64, 16) == split_text(text, fast, 64, 16)


def test_ten_megabytes_in_seconds():
    block = make_text(4, paragraphs=200)
    text = "\n\n".join([block] * (10_000_000 // len(block) + 1))
    assert len(text) >= 10_000_000
    start = time.perf_counter()
    spans = split_spans(text, words_counter, 512, 64)
    elapsed = time.perf_counter() - start
    assert len(spans) > 1000
    assert all(s.tokens <= 512 for s in spans)
    assert elapsed < 30, f"{elapsed:.1f} s for 10 MB"  # ~2 s on one free core; generous for a loaded machine


def test_plan_document_keeps_questions_on_the_parent():
    q = Question("Do otters hold hands?", ("yes",))
    doc = Document("otters", "Sea otters", make_text(5), [q])
    plan = plan_document(doc, words_counter, 80, 20)
    assert plan.split and plan.document is doc and doc.questions == [q]
    assert [p.id for p in plan.passages] == [f"otters#p{k}" for k in range(len(plan.passages))]
    assert all(p.title == "Sea otters" and p.questions == [] for p in plan.passages)
    assert [p.text for p in plan.passages] == split_text(doc.text, words_counter, 80, 20)
    stats = plan.stats()
    assert stats["document"] == "otters" and stats["passages"] == len(plan.passages)
    assert stats["tokens"] == [words_counter(p.text) for p in plan.passages]
    assert stats["overlap_tokens"][0] == 0 and max(stats["overlap_tokens"]) <= 20

    short = plan_document(Document("s", "T", "Otters hold hands."), words_counter, 80, 20)
    assert not short.split and [p.text for p in short.passages] == ["Otters hold hands."]
    assert short.stats() == {"document": "s", "passages": 1, "tokens": [4], "overlap_tokens": [0]}
