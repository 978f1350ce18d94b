# Every target creates .venv on first use and installs what it needs into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# LlamaIndex's OpenAI LLM pins openai<3: its tests run in an environment of their own.
LI_VENV := .venv-llamaindex
LI_STAMP := $(LI_VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(LI_STAMP): pyproject.toml tests/integrations/llamaindex/requirements.txt
	$(PYTHON) -m venv $(LI_VENV)
	$(LI_VENV)/bin/pip install --quiet --upgrade pip
	$(LI_VENV)/bin/pip install --quiet -e . -r tests/integrations/llamaindex/requirements.txt
	touch $(LI_STAMP)

demo: $(STAMP)
	$(BIN)/python examples/runaway_tenant.py

test: $(STAMP) $(LI_STAMP)
	$(BIN)/python -m pytest
	$(LI_VENV)/bin/python -m pytest tests/integrations/llamaindex

lint: $(STAMP)
	$(BIN)/ruff check .
	rm -rf .typecheck && mkdir -p .typecheck/allotment
	for f in core/*; do ln -s "../../$$f" ".typecheck/allotment/$${f#core/}"; done
	ln -s ../../integrations .typecheck/allotment/integrations
	$(BIN)/mypy .typecheck/allotment

bench: $(STAMP)
	$(BIN)/python bench/core_ops.py
	$(BIN)/python bench/policy_overhead.py
	$(BIN)/python bench/wrapper_overhead.py
	$(BIN)/python bench/estimator_error.py
	$(BIN)/python bench/redis_ops.py --quick
	$(BIN)/python bench/redis_floor.py

clean:
	rm -rf $(VENV) $(LI_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .typecheck
