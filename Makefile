# Two commands do everything on a fresh machine:
#   make train    set up, copy the data, train the default preset on the default model
#   make test     set up, run the test suite (what .ci/run does)
# and two for a GPU day (docs/GPU.md):
#   make gpu-bundle   pack the model, the data and the commit into .bundle/ for the device machine
#   make gpu          the GPU day's programme (python -m minbert.gpu.day); ARGS="--dry_run" on a CPU
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# the folder of the default model and the data (minbert/run/paths.py): $MINBERT_SHARED, else ../shared
MINBERT_SHARED ?= ../shared
ARGS   ?=

# On the device machine there is no .venv (and no network): its own python3 has CUDA's torch.
GPU_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))

.PHONY: setup data train test gpu gpu-bundle
setup: $(VENV)/.installed
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

data: setup
	$(PY) data/prepare_data.py --from $(MINBERT_SHARED)/data

train: data
	$(PY) train_multitask.py --preset baseline $(ARGS)

test: setup
	$(PY) -m pytest -q

gpu:
	$(GPU_PY) -m minbert.gpu.day $(ARGS)

gpu-bundle:
	$(MINBERT_SHARED)/tools/device-bundle
	(git rev-parse --short HEAD; git status --porcelain --untracked-files=no) | \
	  awk 'NR == 1 {c = $$0} NR > 1 {d = "+dirty"} END {print c d}' > .bundle/COMMIT
