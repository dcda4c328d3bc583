# SpineMet-FL: `make run` sets everything up and runs the main job; `make test` runs the tests.
# Both create the virtual environment first (idempotent: it is rebuilt only when
# pyproject.toml or constraints.txt change).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= data/cohort
CACHE  ?= data/cache
RUNS   ?= runs
EXTRA  ?= data/extra
EXTRA_PATIENTS ?= 600
EXTRA_SEED     ?= 1000
SEEDS  ?= 0 1 2 3 4
MODELS ?= paper resnet-gn

.PHONY: setup run test bench reproduce clean

$(VENV)/.setup-stamp: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

setup: $(VENV)/.setup-stamp

run: setup
	$(BIN)/spinemet cohort --out $(DATA)
	$(BIN)/spinemet train --data $(DATA) --cache $(CACHE) --out $(RUNS)/paper --overwrite

# The README's calibration table: each model over five training seeds on the default cohort,
# each run also scored on a large extra cohort drawn from another seed.
reproduce: setup
	$(BIN)/spinemet cohort --out $(DATA)
	$(BIN)/spinemet cohort --out $(EXTRA) --patients $(EXTRA_PATIENTS) --seed $(EXTRA_SEED) --no-preview
	for m in $(MODELS); do for s in $(SEEDS); do \
	  $(BIN)/spinemet train --data $(DATA) --cache $(CACHE) --model $$m --seed $$s \
	    --out $(RUNS)/$$m-seed$$s --overwrite && \
	  $(BIN)/spinemet evaluate --model $(RUNS)/$$m-seed$$s/model.pt --data $(EXTRA) \
	    --cache $(EXTRA)-cache || exit 1; done; done
	$(BIN)/spinemet summarise $(foreach m,$(MODELS),$(foreach s,$(SEEDS),$(RUNS)/$(m)-seed$(s)))

test: setup
	$(BIN)/python -m pytest -q --durations=15

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
