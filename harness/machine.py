"""The machine a figure was measured on: CPU model and vendor, the instruction-set extensions
CPU inference speed hangs on, the cores this process may use, memory, and torch when it is
already loaded (a bf16 figure from an AMX machine and a float32 one from an AVX2-only machine
differ by 4x; a figure that does not name its machine cannot be compared).

Reading `describe()` imports nothing heavy: torch is reported only if something else imported it.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

__all__ = ["ISA_CAPS", "ISA_FLAGS", "describe", "native_bf16", "one_line"]

# the extensions that pick a CPU kernel or a dtype (bf16 wants avx512_bf16 or amx_bf16, int8
# the VNNI ones), in the order they are printed
ISA_FLAGS = ("fma", "f16c", "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni",
             "amx_bf16")

# what holds torch, oneDNN and FBGEMM below the CPU's own extensions (a run on an AVX512 CPU
# with all three set to AVX2 uses AVX2 kernels): a figure measured under a cap names it
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
            "FBGEMM_ENABLE_INSTRUCTIONS")
# oneDNN's caps (by prefix) at which it still computes bfloat16 natively; below them it
# converts, as on a CPU without AVX512-BF16
ONEDNN_BF16_CAPS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10",
                    "DEFAULT", "ALL")

CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo(path: Path = CPUINFO) -> dict[str, str]:
    """The first processor's fields in `path` (Linux's /proc/cpuinfo); empty when unreadable.

    Hand-written: py-cpuinfo would be a dependency for a dozen lines of `key : value`."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # one processor is enough: the others repeat it
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # a taskset or cgroup cpuset narrows it
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _torch() -> dict[str, Any] | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return {"version": str(torch.__version__), "threads": int(torch.get_num_threads())}


def describe(path: Path = CPUINFO, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """This machine as a JSON-able dict: cpu_model, cpu_vendor, isa, isa_caps (the ISA_CAPS
    variables set in `env`), cores, cpu_count, memory_bytes, python, torch (None unless
    torch is already imported)."""
    info = _cpuinfo(path)
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_vendor": info.get("vendor_id") or info.get("CPU implementer") or "",
        "isa": [f for f in ISA_FLAGS if f in flags],
        "isa_caps": {name: env[name] for name in ISA_CAPS if env.get(name)},
        "cores": _cores(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "torch": _torch(),
    }


def native_bf16(d: Mapping[str, Any]) -> bool:
    """Whether `describe()`'s machine computes bfloat16 natively in oneDNN: AVX512-BF16 or
    AMX, and no ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) below them."""
    caps = d.get("isa_caps") or {}
    cap = caps.get("ONEDNN_MAX_CPU_ISA") or caps.get("DNNL_MAX_CPU_ISA")
    return bool({"avx512_bf16", "amx_bf16"} & set(d.get("isa") or ())) and (
        cap is None or cap.upper().startswith(ONEDNN_BF16_CAPS))


def one_line(d: Mapping[str, Any]) -> str:
    """`describe()`'s dict in one line, e.g. "Intel(R) Xeon(R) Processor, 2 cores,
    avx2 avx512f avx512_bf16 amx_bf16, 23.4 GiB, torch 2.13.0 (2 threads)"."""
    parts = [str(d.get("cpu_model") or "unknown CPU"), f"{d.get('cores', '?')} cores",
             " ".join(d.get("isa") or ()) or "no avx2"]
    caps = d.get("isa_caps")
    if caps:
        parts.append("held to " + " ".join(f"{k}={v}" for k, v in caps.items()))
    memory = d.get("memory_bytes")
    if isinstance(memory, int):
        parts.append(f"{memory / 2**30:.1f} GiB")
    torch = d.get("torch")
    if isinstance(torch, Mapping):
        parts.append(f"torch {torch.get('version')} ({torch.get('threads')} threads)")
    return ", ".join(parts)
