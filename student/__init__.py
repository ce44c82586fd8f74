"""seal-tt student: absorbs self-edits into one resident LoRA and is scored."""
