# Two commands a newcomer needs: `make demo` and `make test`. Both install what they need first.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CODE := $(wildcard layers functions tests example bench infra)

.PHONY: install demo test lint typecheck unit integration sam schema bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.8
	$(BIN)/uv pip install -q --python $(BIN)/python -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python example/demo.py

test: $(STAMP) lint typecheck
	$(BIN)/python -m syncback.cli schema --check
	$(BIN)/pytest -n 2 --durations=10 tests

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

typecheck: $(STAMP)
	$(BIN)/python -m mypy layers/syncback/syncback

schema: $(STAMP)
	$(BIN)/python -m syncback.cli schema

clean:
	rm -rf $(VENV) .aws-sam example/warehouse.duckdb example/.syncback
