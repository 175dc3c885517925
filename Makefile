# Two commands for a fresh clone (only Python >= 3.11 and make needed):
#   make demo   set up .venv, fetch MovieLens-100K, run the full job on a local Ray
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; install it before the project so pip never resolves
# a newer torch with its CUDA packages. Override on GPU machines, e.g.
#   make demo TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
DEMO_DATA := data/ml-100k
DEMO_CONFIG := configs/movielens-100k.yaml

.PHONY: demo test test-fast venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/chatrec data fetch movielens-100k --dest $(DEMO_DATA)
	$(BIN)/chatrec run --config $(DEMO_CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest

# Unit tests only (skips the end-to-end MovieLens runs).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not slow'

clean:
	rm -rf $(VENV) out .pytest_cache
