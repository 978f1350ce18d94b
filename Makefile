# Every target creates .venv on first use and installs what it needs into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/runaway_tenant.py

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	rm -rf .typecheck && mkdir -p .typecheck/allotment
	for f in core/*; do ln -s "../../$$f" ".typecheck/allotment/$${f#core/}"; done
	ln -s ../../integrations .typecheck/allotment/integrations
	$(BIN)/mypy .typecheck/allotment

bench: $(STAMP)
	$(BIN)/python bench/core_ops.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .typecheck
