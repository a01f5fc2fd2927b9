"""What ``precision: auto`` means on the device at hand, and the autocast context for it.

bf16 autocast pays only where the hardware computes in bf16 natively: CUDA
GPUs, and CPUs with AVX512-BF16 or AMX (x86) or the BF16 extension (Arm);
elsewhere a CPU emulates it, slower than fp32. ``auto`` is bf16 on a GPU.

On a CPU, ``auto`` is bf16 only where both hold: the CPU has native bf16,
detected at run time from /proc/cpuinfo (``avx512_bf16``, ``amx_bf16`` or Arm's
``bf16`` flag; never assumed from the machine's name), and the readout is one
whose ranking survived bf16 (Kendall tau >= 0.9 between fp32 and bf16 fitness
over 8 mappings, ``bench/fidelity.py --precision-check``): the ``agreement``
readout (|bf16 - fp32| <= 0.0001 per mapping, identical ranking, 1.6x less
compute). The fine-tune readout failed it (tau 0.71 at the quickstart budget),
so ``auto`` stays fp32 there; see docs/fitness.md for the figures. ``precision:
bf16`` is the opt-in, and warns where the CPU would only emulate it. The
resolved value (never "auto") goes into an evaluation's spec key, so bf16 and
fp32 units are never mixed.
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


# Readouts whose fp32-vs-bf16 ranking check passed on a CPU with native bf16 (see the module
# docstring); add one only with a passing check.
CPU_AUTO_BF16_READOUTS = frozenset({"agreement"})


def resolve_precision(precision: str, device_type: str, readout: str | None = None) -> str:
    """``auto`` -> bf16 on a GPU; on a CPU, bf16 for a checked ``readout`` where the CPU has native
    bf16, else fp32 (see above); explicit values as given."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16"
    native = device_type == "cpu" and readout in CPU_AUTO_BF16_READOUTS and cpu_has_native_bf16()
    return "bf16" if native else "fp32"


def autocast(precision: str, device_type: str) -> AbstractContextManager:
    """bf16 autocast when ``precision`` resolves to bf16 on this device kind, else nothing."""
    if resolve_precision(precision, device_type) != "bf16":
        return nullcontext()
    if device_type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("precision bf16 on a CPU without native bf16 (AVX512-BF16, AMX) is emulated and "
                      "slower than fp32; set precision: fp32 or auto", stacklevel=2)
    return torch.autocast(device_type, dtype=torch.bfloat16)
