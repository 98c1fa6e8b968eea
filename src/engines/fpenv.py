"""Undo a process-wide floating-point side effect of importing qwen_asr.

`import qwen_asr` imports nagisa, whose DyNet core was built with -ffast-math and switches the calling
thread's SSE unit to flush subnormal numbers to zero (FTZ/DAZ). That silently changes float results for
all later code on the thread (and breaks libraries that check for IEEE-754 behaviour, e.g. hypothesis).
`reset_floating_point_env()` restores the default environment (glibc's FE_DFL_ENV).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_FE_DFL_ENV = ctypes.c_void_p(-1)  # glibc's ((const fenv_t *) -1)


def subnormals_flushed() -> bool:
    smallest_normal = 2.2250738585072014e-308
    return smallest_normal / 2 == 0.0


def reset_floating_point_env() -> None:
    """Restore IEEE-754 defaults (no flush-to-zero) on the calling thread; a no-op where unsupported."""
    if not sys.platform.startswith("linux") or not subnormals_flushed():
        return
    name = ctypes.util.find_library("m")
    if name is None:
        return
    ctypes.CDLL(name).fesetenv(_FE_DFL_ENV)
