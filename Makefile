# Two commands a newcomer needs: `make demo` and `make test`. Both install what they need first.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CODE := $(wildcard layers functions tests example bench infra)
# the SAM CLI gets its own tool environment (its pins clash with ours), inside the project
TOOLS := $(CURDIR)/.tools
SAM := $(TOOLS)/bin/sam
export PATH := $(TOOLS)/bin:$(PATH)

.PHONY: install demo test soak lint typecheck unit integration sam schema bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.8
	$(BIN)/uv pip install -q --python $(BIN)/python -e '.[dev]'
	touch $@

$(SAM): $(STAMP)
	UV_TOOL_DIR=$(TOOLS)/envs UV_TOOL_BIN_DIR=$(TOOLS)/bin $(BIN)/uv tool install -q aws-sam-cli==1.170.0
	touch $@

install: $(STAMP) $(SAM)

demo: $(STAMP)
	$(BIN)/python example/demo.py

test: $(STAMP) $(SAM) lint typecheck
	$(BIN)/python -m syncback.cli schema --check
	$(BIN)/python infra/render_schedules.py --check
	CI=$${CI:-} $(BIN)/pytest -n 2 --durations=10 tests

# not part of make test: the convergence property test, searching thousands of sequences per
# destination (SOAK=N sets how many); a failure prints the sequence to keep as a named test
SOAK ?= 1000
soak: $(STAMP)
	SYNCBACK_SOAK_EXAMPLES=$(SOAK) $(BIN)/pytest -n 2 --timeout=0 -p no:cacheprovider \
		--hypothesis-show-statistics tests/integration/test_convergence_property.py

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

typecheck: $(STAMP)
	$(BIN)/python -m mypy layers/syncback/syncback
	for f in functions/*/app.py; do $(BIN)/python -m mypy $$f || exit 1; done

schema: $(STAMP)
	$(BIN)/python -m syncback.cli schema

# not part of make test: one table of measurements, also written to bench/results.md
bench: $(STAMP) $(SAM)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(TOOLS) .aws-sam example/warehouse.duckdb example/.syncback
