# Two commands do everything on a fresh machine:
#   make train    set up, copy the data, train the default preset on the default model
#   make test     set up, run the test suite (what .ci/run does)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# the folder of the default model and the data (minbert/paths.py): $MINBERT_SHARED, else ../shared
MINBERT_SHARED ?= ../shared
ARGS   ?=

.PHONY: setup data train test
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
