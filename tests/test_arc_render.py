import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.tasks.arc.data import ArcExample, ArcTask
from pipeline.tasks.arc.render import (
    IGNORE_INDEX,
    SYSTEM_PROMPT,
    demonstrations_text,
    encode_chat,
    grid_to_text,
    predict_messages,
    prompt_text,
    render_chat,
    text_to_grid,
    train_messages,
)

_rng = random.Random(0)


def _grid(h, w):
    return tuple(tuple(_rng.randrange(10) for _ in range(w)) for _ in range(h))


TASK = ArcTask(
    "t",
    (ArcExample(_grid(3, 4), _grid(2, 2)), ArcExample(_grid(3, 3), _grid(1, 5)), ArcExample(_grid(5, 2), _grid(4, 4))),
    (_grid(4, 4), _grid(2, 2)),
    (_grid(2, 3), _grid(3, 3)),
)
# The answer repeats the query input verbatim: the mask must pick the assistant turn's copy.
IDENTITY_TASK = ArcTask("same", (ArcExample(((1, 2),), ((1, 2),)),), (((3, 4), (5, 6)),), (((3, 4), (5, 6)),))


# ------------------------------------------------------------------------------------- text


@st.composite
def grids(draw):
    h, w = draw(st.integers(1, 30)), draw(st.integers(1, 30))
    return tuple(tuple(draw(st.lists(st.integers(0, 9), min_size=w, max_size=w))) for _ in range(h))


@given(grid=grids(), sep=st.sampled_from(["", " ", ","]))
@settings(deadline=None, max_examples=60)
def test_grid_text_round_trip(grid, sep):
    text = grid_to_text(grid, sep)
    assert len(text.splitlines()) == len(grid)
    assert text_to_grid(text) == grid


def test_grid_text_format():
    assert grid_to_text(((1, 2, 3), (4, 5, 6))) == "123\n456"
    assert grid_to_text(((1, 2),), " ") == "1 2"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\n12\n34\n\n", ((1, 2), (3, 4))),
        ("```\n12\n34\n```", ((1, 2), (3, 4))),
        ("1, 2\n3, 4", ((1, 2), (3, 4))),
        ("", None),
        ("12\n3", None),
        ("12\nab", None),
        ("12\n\n34", None),
        ("1²", None),
        ("0" * 31, None),
        ("\n".join(["0"] * 31), None),
    ],
)
def test_text_to_grid(text, expected):
    assert text_to_grid(text) == expected


# ------------------------------------------------------------------------------------- messages


def test_train_messages():
    msgs = train_messages(TASK, 1)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[0]["content"] == SYSTEM_PROMPT
    assert msgs[2]["content"] == grid_to_text(TASK.test_outputs[1])
    user = msgs[1]["content"]
    assert user.startswith(demonstrations_text(TASK))
    assert user.endswith("Input:\n" + grid_to_text(TASK.test_inputs[1]))
    assert grid_to_text(TASK.test_outputs[1]) not in user


def test_predict_messages_have_no_answer():
    msgs = predict_messages(TASK, 0, system=None)
    assert [m["role"] for m in msgs] == ["user"]
    assert msgs == train_messages(TASK, 0, system=None)[:-1]
    spaced = predict_messages(TASK, 0, sep=" ")[1]["content"]
    assert grid_to_text(TASK.test_inputs[0], " ") in spaced


def test_message_errors():
    with pytest.raises(IndexError, match="2 test input"):
        predict_messages(TASK, 2)
    with pytest.raises(ValueError, match="no test outputs"):
        train_messages(ArcTask("x", TASK.train, TASK.test_inputs), 0)


# ------------------------------------------------------------------------------------- tokenizers

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama-3 layout, including its habit of trimming message contents.
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# A template without a system role: it silently drops system messages.
NO_SYSTEM = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ '[' + message['role'] + '] ' + message['content'] + '</s>' }}{% endif %}{% endfor %}"
)
LLAMA3_DIGITS = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _corpus():
    texts = [SYSTEM_PROMPT] + [demonstrations_text(t) for t in (TASK, IDENTITY_TASK)]
    # Newline + digit pairs, so the no-split tokenizer learns merges across a turn boundary.
    texts += ["assistant\n" + grid_to_text(_grid(3, 3)) for _ in range(40)]
    return texts * 3


def _tokenizer(kind):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if kind == "chatml":  # Qwen-like: one token per digit
        pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
        specials, kw, template = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, CHATML
    elif kind == "llama3":  # digits in chunks of up to three
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_DIGITS), behavior="isolated"), byte_level])
        specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        kw, template = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|eot_id|>"}, LLAMA3
    elif kind in ("no_split", "no_system", "plain"):  # no pre-tokenization: merges may cross boundaries
        pre = byte_level
        specials, kw = ["<s>", "</s>"], {"bos_token": "<s>", "eos_token": "</s>"}
        template = {"no_split": CHATML, "no_system": NO_SYSTEM, "plain": None}[kind]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, **kw)
    wrapped.chat_template = template
    return wrapped


@pytest.fixture(scope="module")
def toks():
    return {k: _tokenizer(k) for k in ("chatml", "llama3", "no_split", "no_system", "plain")}


@pytest.fixture(scope="module")
def tiny_tokenizers(request):
    from transformers import AutoTokenizer

    try:
        paths = request.getfixturevalue("tiny_models")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py has no tiny_models fixture yet")
    return {arch: AutoTokenizer.from_pretrained(path) for arch, path in paths.items()}


def _labeled(ids, labels):
    return [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]


def _check_exact_mask(tok, messages, ids, labels):
    """Labeled tokens are exactly the assistant content: contiguous, and they decode to it."""
    answer = messages[-1]["content"]
    pos = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    assert pos == list(range(pos[0], pos[-1] + 1))
    assert [labels[i] for i in pos] == [ids[i] for i in pos]
    assert tok.decode(_labeled(ids, labels)) == answer
    # What follows the answer is template, never trained on: the turn end comes right after.
    assert pos[-1] + 1 < len(ids)


@pytest.mark.parametrize("kind", ["chatml", "llama3"])
@pytest.mark.parametrize("task, index", [(TASK, 0), (TASK, 1), (IDENTITY_TASK, 0)])
def test_output_mask_is_exactly_the_answer(toks, kind, task, index):
    tok = toks[kind]
    messages = train_messages(task, index)
    ids, labels = encode_chat(tok, messages, loss="output")
    assert ids == tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    _check_exact_mask(tok, messages, ids, labels)
    # The answer starts exactly where generation would start, also when the user turn holds the same grid.
    first = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    assert tok.decode(ids[:first]) == prompt_text(tok, messages[:-1])


@pytest.mark.parametrize("kind, end_token", [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>"), ("plain", "</s>")])
def test_include_turn_end(toks, kind, end_token):
    tok = toks[kind]
    messages = train_messages(TASK)
    ids, labels = encode_chat(tok, messages, loss="output", include_turn_end=True)
    lab = _labeled(ids, labels)
    assert tok.convert_ids_to_tokens(lab[-1]) == end_token
    assert tok.decode(lab[:-1]) == messages[-1]["content"]


@pytest.mark.parametrize("kind", ["chatml", "llama3", "plain"])
def test_loss_all_trains_on_every_token(toks, kind):
    tok = toks[kind]
    ids, labels = encode_chat(tok, train_messages(TASK), loss="all")
    assert labels == ids
    # No pad-id masking: here pad == eos for llama3 and the turn-end token must stay trained.
    if tok.pad_token_id is not None:
        assert all(lab != IGNORE_INDEX for lab in labels)


def test_llama3_template_writes_the_only_bos(toks):
    tok = toks["llama3"]
    ids, _ = encode_chat(tok, train_messages(TASK))
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id


def test_tokens_straddling_the_answer_boundary(toks):
    tok = toks["no_split"]
    messages = train_messages(TASK)
    text, spans = render_chat(tok, messages)
    (a, b), = spans
    assert text[a:b] == messages[-1]["content"]
    ids, labels = encode_chat(tok, messages, loss="output")
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    covered = set()
    for (s, e), lab in zip(offsets, labels):
        overlaps = s < b and e > a
        assert (lab != IGNORE_INDEX) == overlaps
        if overlaps:
            covered.update(range(s, e))
    assert set(range(a, b)) <= covered
    # The tokenizer did merge across the boundary, so this test exercised the overlap rule.
    assert any(s < a < e or s < b < e for s, e in offsets)


def test_template_that_drops_the_system_turn(toks):
    tok = toks["no_system"]
    messages = train_messages(IDENTITY_TASK)
    text, spans = render_chat(tok, messages)
    assert SYSTEM_PROMPT not in text
    assert [text[a:b] for a, b in spans] == [messages[-1]["content"]]
    assert text[spans[0][1]:] == "</s>"


def test_plain_fallback_without_chat_template(toks):
    tok = toks["plain"]
    messages = train_messages(TASK)
    text, spans = render_chat(tok, messages)
    assert text.startswith("<s>System:\n" + SYSTEM_PROMPT + "\n\nUser:\n")
    assert text.endswith("Assistant:\n" + messages[-1]["content"] + "</s>\n\n")
    assert [text[a:b] for a, b in spans] == [messages[-1]["content"]]
    ids, labels = encode_chat(tok, messages, loss="output")
    assert tok.decode(_labeled(ids, labels)).replace("</s>", "").strip() == messages[-1]["content"]
    prompt = prompt_text(tok, predict_messages(TASK))
    assert prompt.endswith(grid_to_text(TASK.test_inputs[0]) + "\n\nAssistant:\n")


def test_prompt_text_ends_with_generation_cue(toks):
    assert prompt_text(toks["chatml"], predict_messages(TASK)).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert prompt_text(toks["llama3"], predict_messages(TASK)).endswith(
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_several_assistant_turns(toks):
    tok = toks["chatml"]
    messages = [
        {"role": "user", "content": "12"},
        {"role": "assistant", "content": "12"},
        {"role": "user", "content": "34"},
        {"role": "assistant", "content": "12"},
    ]
    text, spans = render_chat(tok, messages)
    assert len(spans) == 2 and spans[0][1] < spans[1][0]
    assert all(text[a:b] == "12" for a, b in spans)
    assert text[: spans[0][0]].endswith("assistant\n") and text[: spans[1][0]].endswith("assistant\n")


def test_encode_chat_errors(toks):
    tok = toks["chatml"]
    with pytest.raises(ValueError, match="loss must be"):
        encode_chat(tok, train_messages(TASK), loss="input")
    with pytest.raises(ValueError, match="at least one assistant"):
        encode_chat(tok, predict_messages(TASK), loss="output")

    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="fast tokenizer"):
        encode_chat(Slow(), train_messages(TASK))


def test_assistant_content_rewritten_by_template(toks):
    tok = toks["chatml"]
    tok_upper = _tokenizer("chatml")
    tok_upper.chat_template = CHATML.replace("message['content']", "message['content'] | upper")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "done"}]
    with pytest.raises(ValueError, match="not found verbatim"):
        encode_chat(tok_upper, messages, loss="output")
    assert encode_chat(tok, messages, loss="output")


# ------------------------------------------------------------------------------------- lead's tiny models


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("task, index", [(TASK, 1), (IDENTITY_TASK, 0)])
def test_tiny_models_output_mask(tiny_tokenizers, arch, task, index):
    tok = tiny_tokenizers[arch]
    messages = train_messages(task, index)
    ids, labels = encode_chat(tok, messages, loss="output")
    _check_exact_mask(tok, messages, ids, labels)
    ids_all, labels_all = encode_chat(tok, messages, loss="all")
    assert ids_all == ids and labels_all == ids
    ids_end, labels_end = encode_chat(tok, messages, loss="output", include_turn_end=True)
    assert tok.convert_ids_to_tokens(_labeled(ids_end, labels_end)[-1]) == tok.eos_token
