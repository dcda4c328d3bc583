# SpineMet-FL: `make run` sets everything up and runs the main job (centralized vs federated
# on the default cohort, one seed); `make test` runs the tests.
# Both create the virtual environment first (idempotent: it is rebuilt only when
# pyproject.toml or constraints.txt change); `make test` adds the [test] extra (pytest and
# the deploy/ linters, which `make run` does not need).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   ?= data/cohort
CACHE  ?= data/cache
RUNS   ?= runs
EXTRA_PATIENTS ?= 600
EXTRA_SEED     ?= 1000
EXTRA  ?= data/extra-$(EXTRA_PATIENTS)-s$(EXTRA_SEED)
SEEDS  ?= 0 1 2 3 4
MODELS ?= paper resnet-gn
STRATEGIES ?= fedavg fedprox fedadam
SIMULATE = $(BIN)/spinemet simulate --data $(DATA) --cache $(CACHE) \
	--extra-patients $(EXTRA_PATIENTS) --extra-seed $(EXTRA_SEED)

.PHONY: setup run test bench reproduce reproduce-federated clean

$(VENV)/.setup-stamp: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.test-stamp: $(VENV)/.setup-stamp
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

setup: $(VENV)/.setup-stamp

# The cohort (when missing), preprocessing (cached), the centralized baseline and the
# federated run (5 IID virtual hospitals, FedAvg) for seed 0, the report. Scored on the
# 189-patient test split; RUN_EXTRA=600 adds the extra test cohort (about 4 minutes more
# here), as `reproduce-federated` always does.
RUN_EXTRA ?= 0
run: setup
	$(BIN)/spinemet simulate --data $(DATA) --cache $(CACHE) --extra-patients $(RUN_EXTRA) \
	  --extra-seed $(EXTRA_SEED) --out $(RUNS)/simulation --seeds 0

# The README's federated results: IID over five seeds; Dirichlet(0.5) label skew with each
# strategy; the cohort's own sites. Each finished side of each seed is kept on a re-run.
reproduce-federated: setup
	$(SIMULATE) --out $(RUNS)/sim-iid-fedavg-b8-carry --seeds $(shell echo $(SEEDS) | tr ' ' ,)
	for s in $(STRATEGIES); do \
	  $(SIMULATE) --out $(RUNS)/sim-dir05-$$s-b8-carry --seeds 0 --partition dirichlet:0.5 \
	    --strategy $$s || exit 1; done
	$(SIMULATE) --out $(RUNS)/sim-site-fedavg-b8-carry --seeds 0 --partition site

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

test: $(VENV)/.test-stamp
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
