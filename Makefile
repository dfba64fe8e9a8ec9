# Everything installs into .venv in one resolve (separate installs have broken botocore pins).
PY ?= python3
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# Some machines' pip configuration names extra package folders that do not exist; pip then
# prints one warning per package. They say nothing about this project: keep them off the screen.
QUIET_PIP := grep -v --line-buffered 'is ignored: it is neither a file nor a directory' || true
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup demo test lint bench

$(STAMP): pyproject.toml
	@echo "setting up $(VENV): one pinned pip resolve (about a minute the first time)"
	@$(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | { $(QUIET_PIP); }
	@$(BIN)/python -m pip install --quiet -e '.[test]' 2>&1 | { $(QUIET_PIP); }
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/recluster demo

# The report test drives a real headless Chromium (Debian's package; CI runs this as root).
test: $(STAMP)
	@[ -x /usr/bin/chromium ] || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests jobs

bench: $(STAMP)
	$(BIN)/python jobs/benchmark.py
