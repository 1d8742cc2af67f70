# The two commands (README.md): `make pipeline` runs the default pipeline, `make test` the tests.
# Both create the virtual environment and fetch the data on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Pinned versions CI installs; `make test LOCK=` resolves the ranges in pyproject.toml afresh.
LOCK   ?= requirements.lock
STAMP  := $(VENV)/.installed-stamp
FMNIST ?= /usr/share/datasets/fashion-mnist
WORDNET ?= /usr/share/wordnet
export DVC_NO_ANALYTICS := 1

.PHONY: quickstart pipeline online text check test env data bench clean

# Traditional vs Selective-Backprop on scikit-learn's digits: the whole workflow in about 30 s.
quickstart: env
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro pipelines/quickstart-digits/dvc.yaml

pipeline: env data
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# Traditional, SB, Stale-SB, AutoAssist (pixel and proxy features, each also capped, and under SB),
# InfoBatch, RHO-LOSS, SVP 50 % and SVP 50 % + Stale-SB on Fashion-MNIST: 36 trainings (3 seeds
# each) of about a minute or less each on 2 cores, plus the proxy and the irreducible-loss model.
online: env data
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro pipelines/online-fashion-mnist/dvc.yaml

# Traditional, SVP (fastText proxy, two fractions and random baselines), SB, Stale-SB, AutoAssist
# (TF-IDF gate), InfoBatch and RHO-LOSS (fastText irreducible-loss model on a 10 % holdout) with a
# 1-D CNN on WordNet supersenses (3 seeds each, about 30 minutes).
text: env data
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro pipelines/text-wordnet/dvc.yaml

# Validate every stage of every pipeline (params, paths, writable outputs, the tracking
# server) without running anything; `dvc repro` does the same first, in its `check` stage.
check: env
	$(BIN)/python stages/check.py
	for p in pipelines/*/; do (cd $$p && $(abspath $(BIN))/python ../../stages/check.py) || exit 1; done

# Two pytest-xdist workers, as CI runs it: the end-to-end tests are mostly stage subprocesses
# (5-12 s each, mostly imports), so two of them share 2 cores well; tests/conftest.py deals the
# costly tests out evenly between the workers. `pytest` alone runs serially (about twice as long).
test: env data
	$(BIN)/python -m pytest -n 2 --dist worksteal

env: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(if $(LOCK),-c $(LOCK)) -e '.[dev]'
	touch $@

# Fashion-MNIST and WordNet 3.0 from Debian's dataset-fashion-mnist and wordnet-base packages
# (offline); elsewhere, set data.source: torchvision and data.download: true in params.yaml, and
# data.path to a WordNet 3.0 dict/ folder.
data:
	@need=""; \
	[ -f $(FMNIST)/train-images-idx3-ubyte.gz ] && echo "Fashion-MNIST found in $(FMNIST)" || need="dataset-fashion-mnist"; \
	[ -f $(WORDNET)/data.noun ] && echo "WordNet found in $(WORDNET)" || need="$$need wordnet-base"; \
	if [ -z "$$need" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need; \
	else echo "missing Debian packages:$$need. Install them, or set data.source: torchvision and" \
		"data.download: true (Fashion-MNIST), data.path (WordNet) in params.yaml"; fi

bench: env data
	$(BIN)/python benchmarks/cost_ratio.py
	$(BIN)/python benchmarks/overhead.py

# Everything the commands generate; never what git tracks (the studies' report/metrics and
# report/curves.csv stay).
clean:
	rm -rf $(VENV) .selectkit results data/store mlflow.db mlruns mlartifacts bench-out .dvc/cache .dvc/tmp
	rm -rf pipelines/*/data pipelines/*/runs pipelines/*/scores/*/ pipelines/*/subsets/*/ pipelines/*/target_scores/*/
	rm -rf pipelines/*/report/*.png pipelines/*/report/*.md pipelines/*/report/summary.json pipelines/quickstart-digits/report
