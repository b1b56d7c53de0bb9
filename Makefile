# Two commands do everything, set-up included:  make study   and   make test
PROFILE ?= cpu
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup study test clean-runs

setup: $(STAMP)

# torch is pinned: a bare `torch` pulls a multi-GB CUDA build; 2.13.0 is the CPU wheel we test on.
$(STAMP): requirements.txt pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

study: $(STAMP)
	$(BIN)/meterseg study --profile $(PROFILE)

test: $(STAMP)
	$(BIN)/python -m pytest tests
	METERSEG_PROFILE=smoke METERSEG_SEEDS=2 METERSEG_RESULTS=$$(mktemp -d) $(BIN)/python -m pytest --nbval-lax -p no:cacheprovider notebooks
