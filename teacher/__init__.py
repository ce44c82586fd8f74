"""seal-tt teacher: self-edit prompts, generation backends and ReST-EM training."""
