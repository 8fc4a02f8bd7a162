# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,onnx,workflow,dev
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

# The demo's documented key; use your own for real models (the key is never logged).
EFFDET_KEY ?= effdet-demo-key
export EFFDET_KEY

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" snakemake --cores 2 all
	@echo "metrics: results/demo/eval/metrics.json  model: results/demo/train/model.tlt"

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf results logs .snakemake
