# Parcours — two commands: `make run` and `make test` (see README).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Test workers (pytest-xdist): the suite waits on sockets and subprocesses as much as on CPU.
TEST_WORKERS ?= 2

.PHONY: run test lint bench clean soak fuzz

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/parcours serve

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) -m 'not serial' $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/python -m pytest -q -ra -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: $(STAMP)
	$(BIN)/ruff check .

soak: $(STAMP)
	PARCOURS_SOAK=1 $(BIN)/python -m pytest -q -ra -m slow $(PYTEST_ARGS)

# Coverage-guided fuzzing (docs/fuzzing.md): each harness for FUZZ_SECONDS and/or FUZZ_RUNS.
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?=
FUZZ_HARNESSES ?=
FUZZ_STAMP := $(VENV)/.fuzz-installed

$(FUZZ_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,fuzz]'
	touch $(FUZZ_STAMP)

fuzz: $(FUZZ_STAMP)
	FUZZ_SECONDS='$(FUZZ_SECONDS)' FUZZ_RUNS='$(FUZZ_RUNS)' $(BIN)/python -m fuzz.run $(FUZZ_HARNESSES)

bench: $(STAMP)
	$(BIN)/python bench/intake.py

clean:
	rm -rf $(VENV) var .pytest_cache
