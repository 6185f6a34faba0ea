# Everything runs from a fresh clone: the first target that needs the virtual
# environment creates it and installs the project with pinned torch/torchvision.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Test processes: one per core, at most 4 (each imports torch and takes ~1 GiB).
JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint docs bench clean

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(BIN)/contsup split resnet110 --k 16
	$(BIN)/contsup train --recipe recipes/digits.yaml --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: $(INSTALLED) lint docs
	$(BIN)/python -m pytest -q -n $(JOBS)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: $(INSTALLED)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

bench: $(INSTALLED)
	$(BIN)/python benchmarks/split.py

clean:
	rm -rf $(VENV) site .pytest_cache .ruff_cache .hypothesis
