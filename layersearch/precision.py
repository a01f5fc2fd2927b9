"""What ``precision: auto`` means on the device at hand, and the autocast context for it.

bf16 autocast pays only where the hardware computes in bf16 natively: CUDA
GPUs, and CPUs with AVX512-BF16 or AMX (x86) or the BF16 extension (Arm).
Elsewhere a CPU emulates it and is slower than fp32, so ``auto`` keeps fp32.
Detection reads the CPU's feature flags at run time, so one config means the
fastest exact-enough path on every machine; the resolved value (not "auto")
goes into an evaluation's spec key, so units computed in bf16 and in fp32
are never mixed.
"""

from __future__ import annotations

import functools
import platform
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

# /proc/cpuinfo flags that mean native bf16 arithmetic (x86 "flags", Arm "Features").
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this machine's CPU has bf16 instructions (Linux; False where it cannot tell)."""
    info = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not info.is_file():
        return False
    for line in info.read_text(errors="replace").splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return bool(NATIVE_BF16_FLAGS & set(value.split()))
    return False


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto`` -> bf16 on a GPU or a CPU with native bf16, fp32 elsewhere; others as given."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16"
    return "bf16" if device_type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast(precision: str, device_type: str) -> AbstractContextManager:
    """bf16 autocast when ``precision`` resolves to bf16 on this device kind, else nothing."""
    if resolve_precision(precision, device_type) == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return nullcontext()
