# crossholder: the whole pipeline as file rules.
#   make figures   set up, fetch data, execute every notebook (papermill), write results/ and figures/
#   make test      set up, fetch data, run the test suite (unit tests, notebook checks, nbval)
#   make lab       JupyterLab on the project kernel
# Both main targets are idempotent: a second run skips what is done.

SHELL   := /bin/bash
PYTHON  ?= python3.11
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.crossholder-installed
KERNEL  := crossholder
PROFILE ?= cpu
DEVICE  ?= cpu
PAPERMILL := $(VENV)/bin/papermill --kernel $(KERNEL) --log-level WARNING --request-save-on-cell-execute
PMARGS  := -p profile $(PROFILE) -p device $(DEVICE)

.PHONY: all setup data test figures lab bench clean distclean
all: figures

# ---------------------------------------------------------------- environment
$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements-lock.txt -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (crossholder)" >/dev/null
	touch $@

setup: $(STAMP)

# ---------------------------------------------------------------- data
RAW := data/MNIST/raw/t10k-labels-idx1-ubyte data/FashionMNIST/raw/t10k-labels-idx1-ubyte
$(RAW) &: | $(STAMP)
	$(PY) -m crossholder.data mnist fashion_mnist

data: $(RAW)
	$(PY) -m crossholder.data mnist fashion_mnist

# ---------------------------------------------------------------- notebooks
NB := notebooks
NOTEBOOKS := $(sort $(wildcard $(NB)/[0-9][0-9]_*.ipynb))
LIB := $(wildcard lib/crossholder/*.py)

# Each notebook executes in place; its stamp records the successful run.
results/.nb-%.done: $(NB)/%.ipynb $(LIB) | $(RAW)
	$(PAPERMILL) $< $< $(PMARGS)
	$(PY) -m crossholder.notebooks strip $<
	@mkdir -p results && touch $@

figures: $(patsubst $(NB)/%.ipynb,results/.nb-%.done,$(NOTEBOOKS))

# ---------------------------------------------------------------- tests
test: $(STAMP) | $(RAW)
	$(PY) -m pytest tests

bench: $(STAMP) | $(RAW)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

lab: $(STAMP) | $(RAW)
	$(VENV)/bin/jupyter lab --notebook-dir=$(NB)

clean:
	rm -rf .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) data
