"""What a benchmark ran on: CPU model, the instruction sets integer GEMMs use, versions, load (device side)."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

# CPU flags (Linux /proc/cpuinfo names) that decide int8 / bf16 GEMM speed: x86 AVX2, VNNI, AMX; ARM dot product, i8mm.
GEMM_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "bf16",
)


def _cpuinfo() -> tuple[str | None, set[str]]:
    """The CPU model name and flags of /proc/cpuinfo (None and empty where there is none)."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and model is None:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def machine_info() -> dict[str, Any]:
    """CPU model, logical CPUs, GEMM-relevant flags present, OS, Python / numpy / onnxruntime versions, load average."""
    import numpy as np
    import onnxruntime as ort

    model, flags = _cpuinfo()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "gemm_flags": [f for f in GEMM_FLAGS if f in flags],
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "load_average": load,
    }
