"""`seal-tt export`: a store's current student as a standard PEFT adapter (merge/replay: the updates concatenated
along the rank; joint: its adapter; library: one per update and a routing manifest) or a plain merged model, each
loaded with PEFT / transformers and compared with the store's own logits in float32."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from tests.test_store import update_args, write_docs

TEXT = "The Kaldor engine was built in 1911 by Ivo Brant in Tessel. Who runs the ferry on Orrin Lake?"
# Float32 rounding only: the store adds each update's B·A into the weights in turn, PEFT computes x·Aᵀ·Bᵀ beside the
# frozen weight. Measured max abs logit difference on the tiny llama (this CPU): merge 2.7e-7, joint and library 0
# (the same computation), merged model 0 (merge) and 2.4e-7 (joint), against ~0.17 that the updates change the
# logits by; 1e-4 leaves room for other CPUs' kernels without hiding a wrong block or a wrong scale.
TOLERANCE = 1e-4


def run_cli(args, capsys):
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def store_logits(store: Path, adapter: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The store's student's logits on TEXT (a library's adapter `adapter` live), and the token ids."""
    from pipeline.ask import open_store

    student = open_store(store).student
    engine = student.engine
    if adapter is not None:
        engine.load_adapter_state(student.library[adapter])
    ids = engine.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return engine.model(input_ids=ids).logits, ids


def peft_logits(base: str, adapter: Path, ids) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        return PeftModel.from_pretrained(model, str(adapter)).eval()(input_ids=ids).logits


def base_logits(base: str, ids) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)(input_ids=ids).logits


def update(store: Path, root: Path, names: list[str], student, strategy: str) -> None:
    docs, q, e = write_docs(root / "docs", names)
    try:
        main([str(a) for a in update_args(store, docs, q, e, student, strategy)])
    except SystemExit as exc:
        assert exc.code == 0


@pytest.fixture(scope="module")
def stores(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("export_stores")
    out = {}
    for strategy in ("merge", "joint", "library"):
        store = root / strategy
        update(store, root / f"d_{strategy}", ["velmora", "orrin"], tiny_models["llama"], strategy)
        update(store, root / f"d_{strategy}", ["velmora", "orrin", "kaldor"], tiny_models["llama"], strategy)
        out[strategy] = store
    return out


@pytest.mark.parametrize("strategy", ["merge", "joint"])
def test_the_exported_adapter_gives_the_stores_logits(stores, tiny_models, tmp_path, capsys, strategy):
    out = tmp_path / "export"
    code, stdout, err = run_cli(["export", "--store", stores[strategy], "--output", out], capsys)
    assert code == 0, err
    cfg = json.loads((out / "adapter_config.json").read_text())
    info = json.loads((out / "seal_tt_export.json").read_text())
    assert cfg["base_model_name_or_path"] == str(Path(tiny_models["llama"]).resolve())
    assert info["base"]["sha256"] and info["updates"] == [1, 2]
    assert cfg["r"] == (8 if strategy == "merge" else 4) == cfg["lora_alpha"]  # rank 4 per update; scaling 1
    ref, ids = store_logits(stores[strategy])
    got = peft_logits(cfg["base_model_name_or_path"], out, ids)
    diff = (got - ref).abs().max().item()
    assert diff < TOLERANCE, diff
    assert (base_logits(cfg["base_model_name_or_path"], ids) - ref).abs().max().item() > 100 * TOLERANCE
    # seal-tt itself reads it back (with the base record the store's adapters carry, when they carry one)
    record = "seal_tt_base.json"
    assert (out / record).exists() == (stores[strategy] / "updates/0002/adapter" / record).exists()
    from pipeline.ask import open_asker

    (answer,) = open_asker(adapter=str(out), student=cfg["base_model_name_or_path"]).ask(["Who built it?"])
    assert isinstance(answer["answer"], str)


def test_a_library_exports_one_adapter_per_update_and_its_routing(stores, tiny_models, tmp_path, capsys):
    out = tmp_path / "export"
    assert run_cli(["export", "--store", stores["library"], "--output", out], capsys)[0] == 0
    routing = json.loads((out / "routing.json").read_text())["adapters"]
    assert {k: sorted(v) for k, v in routing.items()} == {"adapters/update-0001": ["orrin", "velmora"],
                                                        "adapters/update-0002": ["kaldor"]}
    for number, name in ((1, "adapters/update-0001"), (2, "adapters/update-0002")):
        ref, ids = store_logits(stores["library"], number)
        got = peft_logits(str(tiny_models["llama"]), out / name, ids)
        assert (got - ref).abs().max().item() < TOLERANCE


def test_merged_export_is_a_plain_model_with_the_same_logits(stores, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    assert run_cli(["export", "--store", stores["merge"], "--output", out, "--merged"], capsys)[0] == 0
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    ref, ids = store_logits(stores["merge"])
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)(input_ids=ids).logits
    assert (got - ref).abs().max().item() < TOLERANCE
    code, _, err = run_cli(["export", "--store", stores["library"], "--output", tmp_path / "m2", "--merged"], capsys)
    assert code == 2 and "library" in err


def test_past_vllms_rank_cap_it_says_so_and_points_to_merged(stores, tmp_path, capsys):
    code, _, err = run_cli(["export", "--store", stores["merge"], "--output", tmp_path / "e", "--max-lora-rank", 4],
                           capsys)
    assert code == 0 and "rank is 8" in err and "--merged" in err


def test_an_existing_output_is_never_overwritten_without_force(stores, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, _, err = run_cli(["export", "--store", stores["merge"], "--output", mine, "--force"], capsys)
    assert code == 2 and (mine / "notes.txt").read_text() == "mine" and len(err.strip().splitlines()) == 1
    ours = tmp_path / "ours"
    assert run_cli(["export", "--store", stores["merge"], "--output", ours], capsys)[0] == 0
    code, _, err = run_cli(["export", "--store", stores["merge"], "--output", ours], capsys)
    assert code == 2 and "--force" in err
    assert run_cli(["export", "--store", stores["joint"], "--output", ours, "--force"], capsys)[0] == 0
    assert json.loads((ours / "seal_tt_export.json").read_text())["strategy"] == "joint"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left beside it


def test_updates_with_different_target_modules_are_padded_with_zero_blocks(tiny_models, tmp_path):
    """Concatenation of two adapters on different modules equals applying both, one after the other."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.export import concatenate

    base = str(tiny_models["llama"])
    folders = []
    for i, (targets, r, alpha) in enumerate(((["q_proj", "v_proj"], 4, 8), (["q_proj", "o_proj"], 2, 4))):
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                               LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False))
        model.save_pretrained(tmp_path / f"a{i}")
        folders.append(tmp_path / f"a{i}")
    cfg, tensors = concatenate([(folders[0], 1.0), (folders[1], 0.5)])
    assert cfg["r"] == 6 and cfg["target_modules"] == ["o_proj", "q_proj", "v_proj"]
    o_b = tensors["base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight"]
    assert torch.count_nonzero(o_b[:, :4]) == 0 and torch.count_nonzero(o_b[:, 4:]) > 0
    from pipeline.export import _write_adapter

    _write_adapter(tmp_path / "cat", cfg, tensors, {"base_model_name_or_path": base})
    ids = torch.tensor([[5, 17, 33, 42, 8, 91]])
    from peft import PeftModel

    # the reference: the first adapter merged in, then the second at half its scale
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(folders[0])).merge_and_unload()
    second = PeftModel.from_pretrained(model, str(folders[1]))
    for module in second.modules():
        if hasattr(module, "scaling") and isinstance(module.scaling, dict) and "default" in module.scaling:
            module.scaling["default"] *= 0.5
    with torch.no_grad():
        ref = second(input_ids=ids).logits
    got = peft_logits(base, tmp_path / "cat", ids)
    assert (got - ref).abs().max().item() < TOLERANCE


def test_a_gguf_student_names_the_converted_folder_it_was_trained_on(tiny_models, tmp_path, monkeypatch):
    import numpy as np
    from gguf import GGUFWriter

    from core import gguf
    from core.hashing import file_sha256, folder_sha256
    from pipeline.export import base_identity

    monkeypatch.setenv("SEAL_TT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "student.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # the conversion a store's student was loaded from (as `gguf.cached_conversion` leaves it)
    folder = gguf.cache_root() / "gguf" / f"{file_sha256(path)[:16]}-float32"
    shutil.copytree(tiny_models["llama"], folder)
    (folder / gguf.INFO).write_text(json.dumps({"converter": gguf.CONVERTER}))
    ident = base_identity({"path": str(path), "dtype": "float32", "device": "cpu"})
    assert ident["base_model_name_or_path"] == str(folder.resolve())
    assert ident["sha256"] == folder_sha256(folder) and ident["gguf"]["sha256"] == file_sha256(path)
