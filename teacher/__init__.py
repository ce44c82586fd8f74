"""seal-tt teacher: writing self-edits and learning to write them.

Owns: self-edit prompt templates (`prompts`), generation backends (`backends`: transformers, vLLM), selection
policies (`selection`), and the M-step (`sft`: TRL SFT on (prompt, completion); `m_step`: in this process or
`m_step_sharded` under DeepSpeed). May import `core` only: never `student` (the two roles meet in `pipeline`).
"""
