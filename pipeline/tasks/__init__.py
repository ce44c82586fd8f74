"""Tasks: what a context is, what a self-edit becomes, how a student is scored."""
