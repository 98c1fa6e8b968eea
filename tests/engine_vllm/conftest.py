"""The real vLLM engine's tests run in the vLLM venv (`make test-vllm`, part of `make test`); in .venv, which has
no vLLM, this folder is not collected."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("vllm") else ["test_*.py"]
