# Everything installs into .venv in one resolve (separate installs have broken botocore pins).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup demo test lint bench

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

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
