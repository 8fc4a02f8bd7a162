# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,onnx,workflow,dev
STAMP := $(VENV)/.installed-$(EXTRAS)
# pipefail: the install's pip output goes through a filter, and pip's exit status must count.
SHELL := /bin/bash
# pip's own lines minus those that repeat a package already named (cache hits, sizes, already
# installed) or a build step: about one line per package, as it is collected.
PIP_PROGRESS := awk '!/^ *(Using cached|Downloading|Requirement already satisfied|Preparing|Installing build|Getting requirements|Checking if build|Building|Created wheel|Stored in|Obtaining)/ { print; fflush() }'

.PHONY: demo test install clean

# DVC's plots page with vega inline (offline), generated from the installed Snakemake's assets.
PLOTS_TEMPLATE := .dvc/plots_template.html

install: $(STAMP) $(if $(findstring workflow,$(EXTRAS)),$(PLOTS_TEMPLATE))

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "installing effdet[$(EXTRAS)] into $(VENV): 3-10 min, one line per package"
	set -o pipefail; PYTHONUNBUFFERED=1 $(PY) -m pip install --progress-bar off \
		-e '.[$(EXTRAS)]' | $(PIP_PROGRESS)
	touch $@

$(PLOTS_TEMPLATE): $(STAMP) scripts/dvc_plots_template.py
	$(PY) scripts/dvc_plots_template.py --out $@

# The demo's documented key; use your own for real models (the key is never logged).
EFFDET_KEY ?= effdet-demo-key
export EFFDET_KEY
SNAKEMAKE := PATH="$(abspath $(VENV))/bin:$$PATH" snakemake
REPORT := results/report.html

# The whole DAG on CPU (rules/*.smk), then the report, rewritten only when a result changed:
# a second `make demo` runs no job.
demo: install
	$(SNAKEMAKE) --cores 2 all
	@if [ ! -f $(REPORT) ] || [ -n "$$(find results -newer $(REPORT) -print -quit)" ]; then \
		$(SNAKEMAKE) --report $(REPORT); fi
	@echo "report:  $(REPORT)"
	@echo "metrics: results/demo/eval/metrics.json (trained), results/demo/retrain_eval/metrics.json (pruned + retrained)"
	@echo "images:  results/demo/inference/images (labels: results/demo/inference/labels)"

# Two workers, one test module each at a time (--dist loadfile keeps a module's trained
# fixtures in one process): the suite is mostly single-threaded Python around short TF steps,
# so two processes use a 2-core machine that one leaves half idle.
PYTEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

clean:
	rm -rf results logs .snakemake
