# Every target creates .venv on first use and installs what it needs into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# LlamaIndex's OpenAI LLM pins openai<3: its tests run in an environment of their own, with
# the openai and llamaindex extras installed beside it (they must fit together).
LI_VENV := .venv-llamaindex
LI_STAMP := $(LI_VENV)/.installed
# The lowest supported releases of the extras' packages, pinned in LOWEST: the tests of what
# uses them run there too (`make test` runs the newest, in .venv).
LOW_VENV := .venv-lowest
LOW_STAMP := $(LOW_VENV)/.installed
LOWEST := tests/constraints/lowest.txt

.PHONY: demo test test-lowest conformance lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(LI_STAMP): pyproject.toml tests/integrations/llamaindex/requirements.txt
	$(PYTHON) -m venv $(LI_VENV)
	$(LI_VENV)/bin/pip install --quiet --upgrade pip
	$(LI_VENV)/bin/pip install --quiet -e '.[openai,llamaindex]' \
		-r tests/integrations/llamaindex/requirements.txt
	touch $(LI_STAMP)

$(LOW_STAMP): pyproject.toml $(LOWEST)
	$(PYTHON) -m venv $(LOW_VENV)
	$(LOW_VENV)/bin/pip install --quiet --upgrade pip
	$(LOW_VENV)/bin/pip install --quiet -c $(LOWEST) \
		-e '.[redis,openai,anthropic,langchain,llamaindex,prometheus,opentelemetry,webhooks]' \
		langchain-openai langchain-anthropic llama-index-llms-openai \
		llama-index-embeddings-openai opentelemetry-sdk httpx2 vcrpy pytest hypothesis
	touch $(LOW_STAMP)

demo: $(STAMP)
	$(BIN)/python examples/runaway_tenant.py

test: $(STAMP) $(LI_STAMP)
	$(BIN)/python -m pytest
	$(LI_VENV)/bin/python -m pytest tests/integrations/llamaindex

# The integration (LlamaIndex's too), Redis client, pricing and degrade-model (what reads
# genai-prices), metrics, tracing and webhook tests on the lowest releases.
test-lowest: $(LOW_STAMP)
	$(LOW_VENV)/bin/python -m pytest tests/integrations tests/stores/test_redis_*.py \
		tests/test_pricing.py tests/test_degrade.py tests/test_metrics.py tests/test_tracing.py \
		tests/test_webhooks.py

# The server's conformance alone (`make test` runs it too): the runcycles client's own
# live-server suite against `allotment serve`, and schemathesis over the runtime plane.
conformance: $(STAMP)
	$(BIN)/python -m pytest tests/server/test_runcycles_suite.py tests/server/test_schemathesis.py \
		tests/server/test_protocol_edges.py

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
	$(BIN)/python bench/redis_sweep.py --tenants 1000,10000
	$(BIN)/python bench/memory_sweep.py --tenants 1000,10000
	$(BIN)/python bench/server.py --quick
	$(BIN)/python bench/bulk.py
	$(BIN)/python bench/governance.py --tenants 20 --records 1000

clean:
	rm -rf $(VENV) $(LI_VENV) $(LOW_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .typecheck
