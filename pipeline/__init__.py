"""seal-tt workflows: the `seal-tt` CLI and everything that wires the two roles together.

Owns: the commands (`cli`), adapt-student (`adapt`, `sampling`), the ReST-EM outer loop (`rest_em`: E-step,
selection hand-off, M-step call, held-out evaluation; `train_teacher`, `splits`), the demo and its synthetic world,
the tasks (knowledge, ARC), documents and the reward evaluators. May import `teacher`, `student` and `core`;
nothing imports it.
"""
