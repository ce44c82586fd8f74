"""seal-tt's ground layer: what both roles and the workflows stand on.

Owns: typed settings and config loading (`config`), model and tokenizer loading (`models`), LoRA helpers (`lora`),
adapters on disk (`adapters`: save, verify, read, merge), the DeepSpeed launch path (`launch`), run-folder I/O
(`rundir`), errors, progress, derived seeds (`seeds`), and the offline test models (`bpe`, `tiny`, `shapes`).
Imports no role (`teacher`, `student`) and no workflow (`pipeline`): an import-linter contract in pyproject.toml.
"""
