"""Keep freed memory in the process: large tensors reuse pages instead of faulting fresh ones in on every call.

glibc's malloc serves blocks above a (dynamic) threshold with fresh ``mmap`` pages and hands freed memory back to
the kernel; PyTorch's CPU allocator frees every tensor to malloc. Inference that allocates the same large
temporaries on every call (the mask decoder's 4096×256 image tokens per prompt at a 1024 input: 4 MB each, tens of
them a frame) then pays a page fault per 4 KB page on first touch, call after call. Measured on the 2-core AVX2
machine, quiet, 2 threads (``python scripts/decoder_per_box.py`` with ``POWERSAM_MALLOC=system`` and without):
the decoder's cost per extra box fell from 34.7 to 25.7 ms at 1024 and from 8.3 to 6.5 ms at 512 (docs/speed_profile.md,
round seven).

:func:`retain_freed_memory` raises the mmap threshold to 32 MiB (glibc's default ceiling for its dynamic one) and the trim threshold,
so freed blocks stay in the heap and are reused. The cost: the process keeps its peak heap size (freed memory is
not returned to the system until exit). The ``powersam`` command calls it at start-up (``POWERSAM_MALLOC=system``
turns that off); a program that imports powersam as a library decides for itself.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


def retain_freed_memory(trim_threshold: int = 1 << 30, mmap_threshold: int = MMAP_THRESHOLD_MAX) -> bool:
    """Tell glibc's malloc to keep freed memory (module docstring). Returns True when both settings took effect,
    False where there is no glibc (macOS, Windows, musl) or it refused them; nothing else changes then."""
    for name, value in (("trim_threshold", trim_threshold), ("mmap_threshold", mmap_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
            raise ValueError(f"{name} must be a positive int below 2**31 (bytes); got {value!r}")
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))


def retain_freed_memory_unless_disabled() -> bool:
    """:func:`retain_freed_memory` unless the environment says ``POWERSAM_MALLOC=system`` (the ``powersam`` command's
    start-up)."""
    if os.environ.get("POWERSAM_MALLOC", "").strip().lower() == "system":
        return False
    return retain_freed_memory()
