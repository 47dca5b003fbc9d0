# The README's two commands are `make demo` and `make test`; both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck pytest fuzz bench clean

# Two markers: `make demo` needs the runtime dependencies only (.runtime); every other
# target needs the development tools too (.installed, which includes the runtime ones).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.runtime

$(VENV)/.runtime: pyproject.toml
	if [ $(VENV)/.installed -nt pyproject.toml ]; then touch $@; else \
		$(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet --upgrade pip && \
		$(BIN)/pip install --quiet -e . && touch $@; fi

demo: $(VENV)/.runtime
	$(BIN)/pkjwt-gateway demo

test: lint typecheck pytest

# ruff, then the import contracts of docs/architecture.md (pyproject.toml [tool.importlinter]).
lint: $(VENV)/.installed
	$(BIN)/ruff check gateway tests bench
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed
	$(BIN)/mypy

pytest: $(VENV)/.installed
	$(BIN)/python -m pytest -q -rs

# The property tests with a larger budget than CI's (FUZZ_EXAMPLES=150 there).
fuzz: $(VENV)/.installed
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-5000} $(BIN)/python -m pytest -q tests/web/test_properties.py

bench: $(VENV)/.installed
	@command -v wrk >/dev/null || { echo "bench needs wrk (apt-get install wrk)"; exit 2; }
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
