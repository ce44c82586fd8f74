"""Random-weight shapes: the named configs match their checkpoints, build where asked, and the FLOP model is right."""

from pathlib import Path

import pytest
import torch

from core.errors import UserError
from core.shapes import SHAPES, Dims, build_model, build_shape, get_shape, shape_tokenizer

BUNDLED_TOKENIZER = Path(__file__).resolve().parents[1] / "benchmarks/data/squad8k-tokenizer.json.gz"

# Parameter counts the model cards give (embeddings included, tied heads counted once).
PUBLISHED = {"llama-3.2-1b": 1.24e9, "llama-3.2-3b": 3.21e9, "qwen2.5-1.5b": 1.54e9, "qwen2.5-7b": 7.62e9}


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return shape_tokenizer("tiny")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_named_shapes_have_their_checkpoints_parameter_count(name, tiny_tokenizer):
    # The meta device allocates nothing: a 7B shape builds in milliseconds on any machine.
    model = build_model(get_shape(name), tiny_tokenizer, device="meta", dtype="bfloat16")
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(PUBLISHED[name], rel=0.01)
    assert next(model.parameters()).device.type == "meta"
    assert model.config.vocab_size == SHAPES[name].vocab_size > len(tiny_tokenizer)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert Dims.from_config(model.config).linear_params == linear


def test_tiny_shape_builds_in_the_requested_dtype_and_runs(tiny_tokenizer):
    model, tok, shape = build_shape("tiny", dtype="float32", seed=3)
    assert shape.arch == "llama" and model.config.vocab_size == len(tok)
    assert next(model.parameters()).dtype == torch.float32
    again, _, _ = build_shape("tiny", dtype="float32", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    ids = torch.tensor([tok("The bridge is made of stone.")["input_ids"]])
    out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 3)


def test_overrides_shrink_a_real_shape_and_keep_its_vocabulary():
    model, tok, shape = build_shape(
        "qwen2.5-7b", dtype="bfloat16", num_hidden_layers=1, hidden_size=64, intermediate_size=96,
        num_attention_heads=4, num_key_value_heads=2,
    )
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config.vocab_size == 152064 and model.config.num_hidden_layers == 1
    ids = torch.tensor([tok("Qwen shapes take any tiny-tokenizer id.")["input_ids"]])
    assert int(ids.max()) < model.config.vocab_size
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], 152064)


def test_unknown_names_and_fields_are_user_errors():
    with pytest.raises(UserError, match="unknown model shape"):
        get_shape("gpt-5")
    with pytest.raises(UserError, match="unknown shape field"):
        get_shape("tiny", num_layers=3)


def test_bundled_tokenizer_loads_with_special_tokens():
    if not BUNDLED_TOKENIZER.exists():
        pytest.skip("bundled tokenizer not present")
    tok = shape_tokenizer(str(BUNDLED_TOKENIZER))
    assert len(tok) == 8192 and tok.eos_token_id is not None and tok.pad_token_id is not None
    words = "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy."
    ids = tok(words)["input_ids"]
    assert max(ids) < 8192 and len(ids) < 2 * len(words.split())  # near a real tokenizer's ~1.3 tokens per word
    assert tok.decode(ids) == words


def _counted_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_flop_model_matches_torchs_count(tiny_tokenizer):
    """Eager attention computes every query-key pair, the floor counts the causal half; the rest must agree (up to
    the rotary-angle product, hd * length FLOPs, which the model leaves out)."""
    model = build_model(get_shape("tiny"), tiny_tokenizer, attn_implementation="eager")
    dims = Dims.from_config(model.config)
    length = 24
    ids = torch.randint(0, len(tiny_tokenizer), (1, length))
    full_attention = 4 * dims.layers * dims.heads * dims.head_dim * length * length
    causal_attention = 4 * dims.layers * dims.heads * dims.head_dim * length * (length + 1) / 2

    with torch.no_grad():
        forward = _counted_flops(lambda: model(input_ids=ids))
    rotary = dims.head_dim * length
    assert forward == 2 * dims.linear_params * length + full_attention + rotary
    assert dims.forward_flops(length) == forward - rotary - full_attention + causal_attention

    # Frozen weights: backward computes input gradients only (one more pass through each weight, attention twice).
    for p in model.parameters():
        p.requires_grad_(False)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    train = _counted_flops(lambda: model(inputs_embeds=embeds).logits.float().sum().backward())
    assert train == 4 * dims.linear_params * length + 3 * full_attention + rotary
    assert dims.lora_train_flops(length) == train - rotary - 3 * full_attention + 3 * causal_attention
