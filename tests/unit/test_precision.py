"""What precision "auto" resolves to, from the device kind and the CPU's feature flags."""

from __future__ import annotations

import pytest
import torch

import layersearch.precision as precision
from layersearch.precision import autocast, cpu_has_native_bf16, resolve_precision


@pytest.mark.parametrize("flags,native", [
    ("fpu sse2 avx2 avx512f avx512_bf16 amx_tile", True),  # Cooper Lake, Sapphire Rapids
    ("fpu sse2 avx2 amx_bf16 amx_tile", True),
    ("fpu sse2 avx2 avx512f avx512bw", False),  # AVX-512 without bf16: emulated, slower than fp32
    ("fp asimd bf16 i8mm", True),  # Arm "Features"
    ("fp asimd sve", False),
])
def test_native_bf16_read_from_cpu_flags(tmp_path, monkeypatch, flags, native):
    info = tmp_path / "cpuinfo"
    key = "Features" if "asimd" in flags else "flags"
    info.write_text(f"processor\t: 0\nmodel name\t: test\n{key}\t\t: {flags}\n\nprocessor\t: 1\n")
    monkeypatch.setattr(precision, "Path", lambda _: info)
    monkeypatch.setattr(precision.platform, "system", lambda: "Linux")
    cpu_has_native_bf16.cache_clear()
    try:
        assert cpu_has_native_bf16() is native
        # Native or not, auto stays fp32 for the fine-tune readout: bf16 did not keep its ranking ...
        assert resolve_precision("auto", "cpu", "finetune") == "fp32"
        assert resolve_precision("auto", "cpu") == "fp32"
        # ... and is bf16 for a readout whose check passed, only where bf16 is native.
        assert resolve_precision("auto", "cpu", "agreement") == ("bf16" if native else "fp32")
    finally:
        cpu_has_native_bf16.cache_clear()


def test_auto_is_bf16_on_gpu_and_explicit_values_win(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cuda") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert not isinstance(autocast("auto", "cpu"), torch.autocast)
    ctx = autocast("bf16", "cpu")
    assert isinstance(ctx, torch.autocast)
    with ctx:
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    # Asked for where it would be emulated: it still runs, with a warning that says so.
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="emulated"):
        autocast("bf16", "cpu")


def test_this_machine_flags_agree_with_proc_cpuinfo():
    from pathlib import Path

    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    expected = any(f in text.split() for f in ("avx512_bf16", "amx_bf16", "bf16"))
    cpu_has_native_bf16.cache_clear()
    assert cpu_has_native_bf16() is expected
