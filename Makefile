# Every target creates .venv when it is missing; `make test` is what CI runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Exactly one TensorFlow build: `cpu` (tensorflow-cpu on x86-64 Linux, tensorflow elsewhere) or `gpu`
# (tensorflow[and-cuda]), e.g. `make test EXTRAS=gpu,test` on a CUDA machine (delete .venv to switch).
EXTRAS ?= cpu,test
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONUNBUFFERED := 1

.PHONY: venv test lint demo bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[$(EXTRAS)]'
	touch $@

venv: $(VENV)/.installed

# The suite runs in TEST_WORKERS processes (pytest-xdist), one test file per process at a time (module
# fixtures are built once), the slowest files first (tests/conftest.py).
TEST_WORKERS ?= 2
test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# The whole loop on the built-in shapes dataset, on a CPU: train (the `shapes` preset from scratch),
# evaluate (COCO AP), export a SavedModel, predict on 4 validation images.
DEMO_DIR ?= logs/demo
# 900 steps of batch 8: about 10 minutes on 2 CPU cores (benchmarks/shapes_quality.py: segm AP50 ~0.95).
DEMO_STEPS ?= 900
demo: venv
	rm -rf $(DEMO_DIR)
	$(PY) main.py --mode=train --config=shapes --model=none --steps=$(DEMO_STEPS) --model_dir=$(DEMO_DIR)
	$(PY) main.py --mode=eval --model=last --model_dir=$(DEMO_DIR)
	$(PY) main.py --mode=export --model=last --model_dir=$(DEMO_DIR) --export_dir=$(DEMO_DIR)/exported
	$(PY) main.py --mode=predict --model=last --model_dir=$(DEMO_DIR) \
		--images='data/shapes/images/val/00000[1-4].png' --output_dir=$(DEMO_DIR)/predictions
	@echo
	@echo "checkpoints:  $(DEMO_DIR)/checkpoints/   (config: $(DEMO_DIR)/config.json)"
	@echo "metrics:      $(DEMO_DIR)/eval/metrics.json   results: $(DEMO_DIR)/submission.json"
	@test -d $(DEMO_DIR)/exported && echo "SavedModel:   $$(ls -d $(DEMO_DIR)/exported/*/ | tail -1)" || true
	@echo "predictions:  $(DEMO_DIR)/predictions/*.png and *.json"
	@echo "TensorBoard:  $(PY) -m tensorboard.main --logdir $(DEMO_DIR)"

lint: venv
	$(PY) -m ruff check .

bench: venv
	$(PY) benchmarks/inference.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
