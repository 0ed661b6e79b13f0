# megatron_dllm: `make test` and `make demo` work on a fresh machine (they create .venv first).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# test worker processes (pytest-xdist); each test file runs whole in one worker, so a module's
# fixtures are built once. Most tests run single-threaded subprocesses: two workers use both cores.
TEST_WORKERS ?= 2
STAMP := $(VENV)/.installed-stamp

.PHONY: setup test demo clean

setup: $(STAMP)

# torch first: with no CUDA, the pinned CPU build (a CUDA build would be pulled in otherwise).
$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
		echo "[setup] no CUDA: installing the CPU build torch==2.13.0"; \
		$(PY) -m pip install -q torch==2.13.0; \
	fi
	@echo "[setup] installing megatron_dllm and its pinned dependencies"
	@$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

demo: setup
	$(PY) -m megatron_dllm.demo

clean:
	rm -rf $(VENV) runs build *.egg-info
