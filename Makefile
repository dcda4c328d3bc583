# SpineMet-FL: `make run` sets everything up and runs the main job; `make test` runs the tests.
# Both create the virtual environment first (idempotent: it is rebuilt only when
# pyproject.toml or constraints.txt change).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= data/cohort
CACHE  ?= data/cache

.PHONY: setup run test bench clean

$(VENV)/.setup-stamp: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

setup: $(VENV)/.setup-stamp

run: setup
	$(BIN)/spinemet cohort --out $(DATA)
	$(BIN)/spinemet preprocess --data $(DATA) --cache $(CACHE)

test: setup
	$(BIN)/python -m pytest -q --durations=15

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
