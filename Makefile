# crossholder: the whole pipeline as file rules.
#   make figures   set up, fetch data, execute notebooks 01, 02, 04-10 (papermill), write results/ and figures/
#   make selection the hyperparameter grid of notebook 03 (hours at the cpu profile; Ray tasks)
#   make seeds     every configuration trained and evaluated with seeds 1 and 2 (Ray tasks; many hours)
# Long runs go through Ray (crossholder.jobs): a local instance by default, a cluster with
# RAY_CLUSTER=auto (or host:port, ray://host:port); results/ must then be on a shared file system.
#   make test      set up, fetch data, run the test suite (unit tests, notebook checks, nbval)
#   make gpu-check DEVICE=cuda   a lent GPU in one command (~8 min): notebooks at smoke, paper-profile units, cpu agreement
#   make lab       JupyterLab at the project root on the project kernel (LAB_ARGS for a remote machine)
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
RAY_CLUSTER ?=
JOBS    := $(PY) -m crossholder.jobs --profile $(PROFILE) --device $(DEVICE)$(if $(RAY_CLUSTER), --address $(RAY_CLUSTER),)

.PHONY: all setup data test figures selection seeds lab bench browser clean distclean plan check-device gpu-check
all: figures

# ---------------------------------------------------------------- environment
$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements-lock.txt -e '.[dev,autoattack]'
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
# notebooks/NN_*.py (jupytext py:percent) are the sources of notebooks/NN_*.ipynb (paired: an edit
# in JupyterLab updates both; `jupytext --sync notebooks/NN_*.ipynb` after editing a .py elsewhere).
# The canonical run (PROFILE=cpu DEVICE=cpu, MNIST) executes a source notebook in place with *no*
# injected parameters, so its tagged parameters cell stays the one that counts; every other
# parameter set writes an executed copy to notebooks/runs/ (suffixed with the profile and device when
# they are not cpu), and its results and figures go to results/variants/ and figures/variants/.
# All results are cached in results/, so with the committed results every rule only reloads and
# redraws, writing the same bytes. Stamps in results/.make (gitignored).
NB        := notebooks
RUNS      := $(NB)/runs
# one stamp folder per profile and device: `make figures PROFILE=paper DEVICE=cuda` after a cpu run does its own work
STAMPS    := results/.make/$(PROFILE)-$(DEVICE)
NOTEBOOKS := $(sort $(wildcard $(NB)/[0-9][0-9]_*.ipynb))
LIB       := $(wildcard lib/crossholder/*.py)
DATASETS  := mnist fashion_mnist
DEFENSES  := none cross_lipschitz cross_holder adversarial
STRIP     := $(PY) -m crossholder.notebooks strip
CANONICAL := $(and $(filter cpu,$(PROFILE)),$(filter cpu,$(DEVICE)))
SUFFIX    := $(if $(filter cpu,$(PROFILE)),,-$(PROFILE))$(if $(filter cpu,$(DEVICE)),,-$(DEVICE))
RUNARGS   := $(PMARGS) -p progress False
# $(call run,SOURCE,RUN NAME,PARAMETERS): in place when canonical and RUN NAME is empty, else to runs/
run = mkdir -p $(RUNS) && if [ -n "$(CANONICAL)" ] && [ -z "$(2)" ]; then \
        $(PAPERMILL) $(1) $(1) && $(STRIP) $(1); \
      else out=$(RUNS)/$(basename $(notdir $(1)))$(2)$(SUFFIX).ipynb; \
        $(PAPERMILL) $(1) $$out $(RUNARGS) $(3) && $(STRIP) $$out; fi

$(STAMPS)/01.done: $(NB)/01_hessian_norm_estimation.ipynb $(LIB) | $(RAW) check-device
	$(call run,$<,,)
	@mkdir -p $(STAMPS) && touch $@

# 02: one run per (dataset, defense): fills results/models.json (the canonical MNIST Cross-Hölder run in place).
# The eight trainings run first as Ray tasks, in parallel (cached: with committed results they only load);
# the notebooks then find them done.
TRAIN_ALL := $(foreach ds,$(DATASETS),--dataset $(ds)) $(foreach def,$(DEFENSES),--defense $(def))
$(STAMPS)/02.done: $(NB)/02_training.ipynb $(LIB) | $(RAW) check-device
	$(JOBS) train $(TRAIN_ALL)
	for ds in $(DATASETS); do for def in $(DEFENSES); do \
	  if [ $$ds-$$def = mnist-cross_holder ]; then name=""; else name="-$$ds-$$def"; fi; \
	  $(call run,$<,$$name,-p dataset $$ds -p defense $$def) || exit 1; \
	done; done
	@mkdir -p $(STAMPS) && touch $@

# 03: hyperparameter selection on the validation split, per dataset. Not part of `figures`: it
# makes no figure of the paper, and at the cpu profile its grid is about 10 h of 2-core compute
# (17 training runs per data set). `make selection` scores every missing point (resumable, cached
# per grid point; executed copies in notebooks/runs/), then redraws the source notebook, which
# tables the points scored (grid=False, its default; seconds).
$(STAMPS)/03.done: $(NB)/03_hyperparameter_selection.ipynb $(LIB) | $(RAW) check-device
	for ds in $(DATASETS); do $(call run,$<,-$$ds-grid,-p grid True -p dataset $$ds -p address "$(RAY_CLUSTER)") || exit 1; done
	$(call run,$<,,)
	$(call run,$<,-fashion_mnist,-p dataset fashion_mnist)
	@mkdir -p $(STAMPS) && touch $@

# 04: robustness curves per dataset (needs the models of 02). The eight curves of the notebook's
# protocol run first as Ray tasks, in parallel (cached: with committed results they only load).
EVAL_PROTOCOL := $(or $(shell sed -n 's/^protocol: str = "\([^"]*\)".*/\1/p' $(NB)/04_robustness.py),strongest)
$(STAMPS)/04.done: $(NB)/04_robustness.ipynb $(STAMPS)/02.done $(LIB) | $(RAW) check-device
	$(JOBS) evaluate $(TRAIN_ALL) --protocol $(EVAL_PROTOCOL)
	$(call run,$<,,)
	$(call run,$<,-fashion_mnist,-p dataset fashion_mnist)
	@mkdir -p $(STAMPS) && touch $@

# 05-10: analysis notebooks; they compute nothing and show tables generated from results/ (crossholder.reports)
ANALYSES := $(sort $(wildcard $(NB)/0[5-9]_*.ipynb $(NB)/1[0-9]_*.ipynb))
# (they show the committed cpu results, so they run only in the canonical run: in place, no parameters)
$(STAMPS)/analyses.done: $(ANALYSES) $(LIB) | $(STAMP) check-device
	@if [ -z "$(CANONICAL)" ]; then echo "notebooks 05-10 show the committed cpu results: skipped"; else \
	  for nb in $(ANALYSES); do $(PAPERMILL) $$nb $$nb && $(STRIP) $$nb || exit 1; done; \
	  mkdir -p $(STAMPS) && touch $@; fi

FIGURE_STAMPS := $(STAMPS)/01.done $(STAMPS)/02.done $(STAMPS)/04.done $(STAMPS)/analyses.done
figures: plan $(FIGURE_STAMPS)
selection: plan $(STAMPS)/03.done

# what this run will do, in one line, before any work
plan:
	@echo "[make] $(MAKECMDGOALS) at PROFILE=$(PROFILE) DEVICE=$(DEVICE): $(if $(CANONICAL),the canonical run (notebooks in place; results/, figures/),a variant (executed copies in notebooks/runs/; results/variants/, figures/variants/)); stamps in $(STAMPS)/"

# DEVICE must be usable here: one line and no file written otherwise (before any notebook runs)
check-device: $(STAMP)
	@$(PY) -m crossholder.experiments check-device $(DEVICE)
# seeds 1 and 2 of every configuration, trained then evaluated (strongest protocol), as Ray tasks;
# resumable: a rerun skips what is done
# (seeds 1 and 2 on the first 500 test images, seed 0's 1,000-image curves contributing their first
# 500; each checked by AutoAttack on its first SEEDS_CHECKS images; then the tables and figures of
# the seed study, crossholder.seeds)
SEEDS_N ?= 500
SEEDS_CHECKS ?= 100
seeds: $(STAMP) | $(RAW)
	$(JOBS) seeds --seeds 1 2 --n $(SEEDS_N) --checks $(SEEDS_CHECKS)
	$(PY) -m crossholder.seeds --n $(SEEDS_N)

# One command for a lent GPU (crossholder.gpu_check, about 8 min on one GPU): notebooks 01-04 at smoke
# on DEVICE, one unit of each expensive step of the paper profile (an epoch of all-class Cross-Hölder,
# the strongest sweep of one model, |Hv*| on the test set), the device against the CPU; report in
# results/gpu/<device>.json. DEVICE=cpu runs it at smoke (tests/test_gpu_check.py, so CI) into ignored
# results/variants/smoke/gpu/.
gpu-check: $(STAMP) | $(RAW) check-device
	$(PY) -m crossholder.gpu_check --device $(DEVICE)

# ---------------------------------------------------------------- tests
# One pytest run: unit tests, notebook checks (smoke runs) and nbval on every executed, committed
# notebook (re-executed against the committed results; cells marked NBVAL_CHECK_OUTPUT must match).
NBVAL_ARGS = --nbval-lax --nbval-kernel-name $(KERNEL) --nbval-sanitize-with tests/nbval_sanitize.cfg
test: $(STAMP) | $(RAW)
	nbs="$$($(PY) -m crossholder.notebooks executed $(NOTEBOOKS) $(wildcard $(RUNS)/*.ipynb))" && \
	$(PY) -m pytest tests $$nbs $(NBVAL_ARGS) -p no:cacheprovider

# Debian's Chromium and its driver for tests/test_lab_browser.py (the test runs this only when they are missing)
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else \
	  echo "installing chromium and chromium-driver needs root (apt-get)"; exit 1; fi; \
	$$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	{ $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

bench: $(STAMP) | $(RAW)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# JupyterLab at the project root (README, figures/, results/ browsable); on a remote machine:
#   make lab LAB_ARGS="--no-browser --ip=127.0.0.1 --port=8888"   then ssh -L 8888:127.0.0.1:8888 HOST
LAB_ARGS ?=
# (as root, in containers and cloud notebooks, Jupyter refuses to start without --allow-root: added then)
lab: $(STAMP) | $(RAW)
	$(VENV)/bin/jupyter lab --notebook-dir=. $(if $(filter 0,$(shell id -u)),--allow-root,) $(LAB_ARGS)

clean:
	rm -rf .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) data
