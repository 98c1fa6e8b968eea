"""Let torchvision's Python part import where its C++ ops library cannot load.

PyPI's torchvision wheels for x86_64 are CUDA builds: beside the CPU build of torch their `_C.so` cannot load
(it links libc10_cuda.so). torchvision supports running without its ops (`torchvision.extension._has_ops()` is
then False and only the detection ops raise), but 0.28 registers fake kernels for `nms` and `qnms` without that
check, so `import torchvision` fails ("operator torchvision::nms does not exist"). transformers 5 imports
torchvision for every image processor, and vLLM's Qwen3-ASR imports Qwen2-VL's, so vLLM cannot load Qwen3-ASR.

This module, imported at interpreter start by a `.pth` file that `scripts/install_vllm_env.sh` writes into the
vLLM venv only where the import fails, defines those two schemas just before torchvision registers them, and
only when the ops library did not load. Audio never calls them. Where PyTorch's CPU index is reachable, install
its `+cpu` torchvision instead and none of this is written.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any

_KEEP: list[Any] = []  # a torch.library.Library drops its definitions when it is garbage-collected


class _BeforeMetaRegistrations(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "torchvision._meta_registrations" and not _KEEP:
            _define_missing_schemas()
        return None  # the normal finders load the module


def _define_missing_schemas() -> None:
    import torch
    import torchvision.extension

    if torchvision.extension._has_ops():
        _KEEP.append(None)
        return
    library = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP.append(library)


sys.meta_path.insert(0, _BeforeMetaRegistrations())
