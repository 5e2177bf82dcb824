# The two commands a user needs: `make up` runs the platform, `make test` runs the tests.
SHELL := /bin/bash
# The interpreter of .venv: the distribution's python3.11 where there is one. Debian and Ubuntu build it with
# profile-guided and link-time optimisation, as the images' python:3.11 is built; a default source build (pyenv's,
# which comes first on many PATHs) has neither and costs the web app 10% more CPU a request (BENCHMARKS.md).
PYTHON ?= $(or $(wildcard /usr/bin/python3.11),python3.11)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where torch comes from: PyTorch's CPU index, as in the images, because PyPI's Linux wheel of torch is the CUDA build
# (several GB of CUDA packages). `make install TORCH_INDEX=` leaves it to pip's own sources (a mirror, local wheels),
# as does an index that does not answer (pip would retry it for each package first); pip's configured find-links and
# extra indexes count either way.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install up down status lock test test-fast clean-venv

install: $(STAMP) ## create the virtual environment from the lock file (skipped when up to date)

# setup.py and the C source: `pip install -e .` compiles doodle_lib/_simplify.c into doodle_lib/ (gcc needed).
$(STAMP): requirements/lock.txt pyproject.toml setup.py doodle_lib/_simplify.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing locked dependencies into $(VENV) (first time: a few minutes)"
	@$(BIN)/pip install -q --upgrade pip
	@index="$(TORCH_INDEX)"; \
	if [ -n "$$index" ] && ! $(BIN)/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)' \
	    "$$index/" 2>/dev/null; then echo "$$index does not answer: torch comes from pip's own sources"; index=""; fi; \
	$(BIN)/pip install -q torch==2.13.0 $${index:+--index-url "$$index"}
	@$(BIN)/pip install -q -r requirements/lock.txt
	@$(BIN)/pip install -q --no-deps -e .
	@touch $(STAMP)

up: install ## run the whole platform on this machine (Ctrl-C stops it)
	$(BIN)/doodle stack up

down: ## stop a platform started by `make up`
	@if test -x $(BIN)/doodle; then $(BIN)/doodle stack down; else echo "not installed: nothing runs"; fi

status: ## is the platform running, and is each service healthy
	@if test -x $(BIN)/doodle; then $(BIN)/doodle stack status; else echo "not installed: nothing runs"; fi

lock: ## re-resolve requirements/*.in into requirements/lock.txt
	TORCH_INDEX=$(TORCH_INDEX) bash scripts/lock.sh

test: install ## every test: unit, integration (real MLflow, Airflow, gunicorn), browser
	$(BIN)/python -m pytest

test-fast: install ## the tests not marked slow
	$(BIN)/python -m pytest -m "not slow"

clean-venv:
	rm -rf $(VENV)
