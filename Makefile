# One-command set-up: `make serve` and `make test` create .venv and install everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

.PHONY: install serve test lint readme clean

$(STAMP): pyproject.toml tests/node/package-lock.json
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: a later resolve then keeps it instead of pulling a CUDA build.
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[asr,vad,onnx,dev]' -c constraints.txt
	# The official openai npm package for tests/test_node_sdk.py (skipped where npm is missing).
	if command -v npm >/dev/null 2>&1; then npm ci --prefix tests/node --no-audit --no-fund; fi
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/asr-server serve

test: $(STAMP)
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts bench

readme: $(STAMP)
	$(BIN)/python scripts/update_readme_settings.py
	$(BIN)/python scripts/update_readme_map.py

clean:
	rm -rf $(VENV) .pytest_cache .cache
