# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv and install
# everything first (torch pinned through constraints.txt, weight/data packages with --no-deps).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.osrm-installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export OSRM_ASSET_CACHE ?= $(HOME)/.cache/osrm/assets

.PHONY: install assets test demo lint format bench bench-quick clean

install: $(STAMP) assets

$(STAMP): pyproject.toml constraints.txt requirements-assets.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test]'
	$(PIP) install -q --no-deps -r requirements-assets.txt
	touch $@

# BIG-bench ships pair/NLI tasks in its sdist: downloaded through pip's configured index (so the
# build works behind any mirror), checksum verified, never installed; osrm reads the task.json
# files from the tarball. The venv's own pip is used: it accepts the sdist's old metadata.
BIGBENCH_SHA256 := 1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2
BIGBENCH := $(OSRM_ASSET_CACHE)/bigbench-1.0.0.tar.gz

assets: $(BIGBENCH)

$(BIGBENCH): | $(STAMP)
	@mkdir -p "$(@D)"
	rm -rf "$@.dl" && mkdir -p "$@.dl"
	$(PIP) download -q --no-deps --no-binary :all: bigbench==1.0.0 -d "$@.dl"
	echo "$(BIGBENCH_SHA256)  $@.dl/bigbench-1.0.0.tar.gz" | sha256sum -c --quiet
	mv "$@.dl/bigbench-1.0.0.tar.gz" "$@"
	rm -rf "$@.dl"

test: install
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/osrm demo

# Every benchmark in bench/ (about 2 hours on 2 CPU cores, plus about 8 for bench/budget.py), then docs/RESULTS.md from the JSON.
bench: install
	$(PY) bench/all.py

bench-quick: install
	$(PY) bench/all.py --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

format: $(STAMP)
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
