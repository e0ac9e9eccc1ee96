# One-command entry points for a fresh machine (Python >= 3.10 with venv).
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
# Exact versions of every dependency (pip-tools); pyproject.toml keeps the loose ranges for
# library users. `make lock` refreshes it, `make lock UPGRADE=1` moves to the newest releases.
LOCK := requirements.lock

.PHONY: install test mutate train demo lint bench lock clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e ".[dev,integrations,onnx]"
	touch $@

install: $(VENV)/.installed

test: install  ## set up and run the test suite (what CI runs)
	$(VENV)/bin/ruff check dst tests benchmarks
	$(PY) -m pytest -q -m "not cuda" --durations=10

mutate: install  ## do the rule tests catch each single wrong rule? (tests/mutate.py)
	OMP_NUM_THREADS=1 $(PY) tests/mutate.py $(ARGS)

train: install  ## set up and run the main job (DSR WRN-28-2 on the CIFAR-10 subset)
	$(VENV)/bin/dst-train experiment=subset_wrn28_2_dsr $(ARGS)

demo: install  ## a quick CPU demo (a couple of minutes)
	$(VENV)/bin/dst-train experiment=quick_demo $(ARGS)

bench: install
	$(PY) benchmarks/bench_core.py

lock:  ## re-resolve requirements.lock from pyproject.toml with pip-compile
	$(PY) -m pip install -q pip-tools
	$(VENV)/bin/pip-compile --quiet --extra dev --extra integrations --extra onnx --strip-extras --no-emit-index-url \
		--no-emit-find-links $(if $(UPGRADE),--upgrade,) -o $(LOCK) pyproject.toml

clean:
	rm -rf $(VENV) outputs multirun
