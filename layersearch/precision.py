"""What ``precision: auto`` means on the device at hand, and the autocast context for it.

bf16 autocast pays only where the hardware computes in bf16 natively: CUDA
GPUs, and CPUs with AVX512-BF16 or AMX (x86) or the BF16 extension (Arm);
elsewhere a CPU emulates it, slower than fp32. ``auto`` is bf16 on a GPU.

On a CPU, even one with native bf16, ``auto`` stays fp32: bf16 had to keep
the proxy ranking (Kendall tau >= 0.9 between fp32 and bf16 fitness over 8
mappings, ``bench/fidelity.py --precision-check``) and did not (0.71 at the
quickstart budget, 1.8x faster; see the README). ``precision: bf16`` is the
opt-in, and warns where the CPU would only emulate it. The resolved value
(never "auto") goes into an evaluation's spec key, so bf16 and fp32 units
are never mixed.
"""

from __future__ import annotations

import functools
import platform
import warnings
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


# Flip only with a passing ranking check on this CPU kind (see the module docstring).
CPU_AUTO_BF16 = False


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto`` -> bf16 on a GPU, fp32 on a CPU (see above); explicit values as given."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16"
    return "bf16" if device_type == "cpu" and CPU_AUTO_BF16 and cpu_has_native_bf16() else "fp32"


def autocast(precision: str, device_type: str) -> AbstractContextManager:
    """bf16 autocast when ``precision`` resolves to bf16 on this device kind, else nothing."""
    if resolve_precision(precision, device_type) != "bf16":
        return nullcontext()
    if device_type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("precision bf16 on a CPU without native bf16 (AVX512-BF16, AMX) is emulated and "
                      "slower than fp32; set precision: fp32 or auto", stacklevel=2)
    return torch.autocast(device_type, dtype=torch.bfloat16)
