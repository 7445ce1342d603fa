"""`harness.machine`: the machine a figure was measured on, read from this machine's
/proc/cpuinfo and from a recorded AVX2-only AMD one."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import pytest

from harness.machine import ISA_FLAGS, describe, native_bf16, one_line

CPUINFO = Path("/proc/cpuinfo")

# the start of an AMD EPYC's /proc/cpuinfo (flags shortened): AVX2, no AVX-512, no AMX
EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni
"""


def _field(name: str) -> str:
    line = next(x for x in CPUINFO.read_text().splitlines() if x.split(":")[0].strip() == name)
    return line.partition(":")[2].strip()


@pytest.mark.skipif(not CPUINFO.is_file(), reason="needs Linux's /proc/cpuinfo")
def test_describe_names_this_machine() -> None:
    d = describe()
    assert d["cpu_model"] == _field("model name")
    assert set(d["isa"]) <= set(_field("flags").split())
    assert set(d["isa"]) <= set(ISA_FLAGS)
    assert d["cores"] == len(os.sched_getaffinity(0))
    assert d["memory_bytes"] > 2**20
    assert (d["torch"] is None) == ("torch" not in sys.modules)
    assert json.loads(json.dumps(d)) == d  # what goes into --json and machine.json

    line = one_line(d)
    assert line.startswith(f"{d['cpu_model']}, {d['cores']} cores")
    assert f" cores, {' '.join(d['isa']) or 'no avx2'}, " in line
    assert f"{d['memory_bytes'] / 2**30:.1f} GiB" in line


def test_an_avx2_only_amd_machine_lists_no_avx512(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(EPYC)
    d = describe(path)
    assert d["cpu_model"] == "AMD EPYC 7763 64-Core Processor"
    assert d["cpu_vendor"] == "AuthenticAMD"
    assert d["isa"] == ["fma", "f16c", "avx2"]
    line = one_line(d)
    assert line.startswith("AMD EPYC 7763 64-Core Processor, ")
    assert ", fma f16c avx2, " in line and "avx512" not in line


def test_without_cpuinfo_the_platform_names_the_cpu(tmp_path: Path) -> None:
    d = describe(tmp_path / "missing")
    assert d["cpu_model"] == (platform.processor() or platform.machine())
    assert d["isa"] == []
    assert "no avx2" in one_line(d)


def test_one_line_reads_a_description_back_from_json() -> None:
    d = {"cpu_model": "Intel(R) Xeon(R) Processor", "cores": 2,
         "isa": ["avx2", "avx512f", "avx512_bf16", "amx_bf16"], "memory_bytes": 25 * 2**30,
         "torch": {"version": "2.13.0", "threads": 2}}
    assert one_line(d) == ("Intel(R) Xeon(R) Processor, 2 cores, avx2 avx512f avx512_bf16 "
                           "amx_bf16, 25.0 GiB, torch 2.13.0 (2 threads)")
    assert one_line({}) == "unknown CPU, ? cores, no avx2"


def test_an_isa_cap_is_named_and_holds_bf16_to_what_onednn_may_use(tmp_path: Path) -> None:
    """A run held to AVX2 kernels on an AVX512-BF16 CPU (the variables torch, oneDNN and
    FBGEMM read) names the cap, and bfloat16 is not native under it."""
    path = tmp_path / "cpuinfo"
    path.write_text(EPYC.replace("avx2 bmi2", "avx2 avx512f avx512_bf16 bmi2"))
    env = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "HOME": "/root"}
    d = describe(path, env)
    assert d["isa_caps"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert "held to ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2" in one_line(d)
    assert not native_bf16(d)
    assert native_bf16(describe(path, {}))
    assert describe(path, {})["isa_caps"] == {}
    assert native_bf16(describe(path, {"DNNL_MAX_CPU_ISA": "avx512_core_bf16"}))
    assert not native_bf16(describe(path, {"DNNL_MAX_CPU_ISA": "AVX512_CORE_VNNI"}))
    plain = tmp_path / "plain"
    plain.write_text(EPYC)
    assert not native_bf16(describe(plain, {}))
