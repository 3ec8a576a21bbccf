# Every target creates .venv when it is missing; `make test` is what CI runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONUNBUFFERED := 1

.PHONY: venv test lint demo bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q -ra --durations=15 tests

lint: venv
	$(PY) -m ruff check .

bench: venv
	$(PY) benchmarks/inference.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
