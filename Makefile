# One-command entry points for a fresh machine (Python >= 3.10 with venv).
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: install test train demo lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install  ## set up and run the test suite (what CI runs)
	$(VENV)/bin/ruff check dst tests benchmarks
	$(PY) -m pytest -q -m "not cuda" --durations=10

train: install  ## set up and run the main job (DSR WRN-28-2 on the CIFAR-10 subset)
	$(VENV)/bin/dst-train experiment=subset_wrn28_2_dsr $(ARGS)

demo: install  ## a quick CPU demo (a couple of minutes)
	$(VENV)/bin/dst-train experiment=quick_demo $(ARGS)

bench: install
	$(PY) benchmarks/bench_core.py

clean:
	rm -rf $(VENV) outputs multirun
