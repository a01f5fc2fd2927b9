"""Keep freed memory in the process on CPU, so big per-step buffers are not page-faulted anew.

Every training step frees and reallocates the same large tensors: the dense
gradient of the student's word embeddings alone is vocab x width floats (47 MB
for a 384-wide BERT vocabulary). glibc serves blocks that large with mmap and
hands them back with munmap, so each step pays the kernel to fault in and zero
those pages again. Telling malloc to take everything from its heap and never
trim it lets the next step reuse the same pages: on the 2-core CI machine a
proxy distillation step became 7% faster (2.27 s -> 2.10 s for 6 steps of
16 x 64 tokens, 3-layer student, MiniLM-L6 teacher).

The cost is that the process keeps its peak footprint until it exits, which
suits evaluator workers and distill runs. Set LAYERSEARCH_KEEP_FREED_MEMORY=0
to leave malloc alone. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Switch glibc malloc to heap-only, never-trimmed allocation; True if it took effect.

    Idempotent and cheap, so every training loop calls it.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("LAYERSEARCH_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs without mallopt
        return _applied
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success. The trim threshold is an int: 2 GiB - 1 is "never" in practice.
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
