"""What `--dtype auto` and the other format options resolve to, from the CPU's flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from targets.reference.models import ModelError, cpu_has_native_bf16, default_dtype, load_model


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n\n")
    return path


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "avx512f avx512_bf16 avx512_vnni"))
    assert cpu_has_native_bf16(_cpuinfo(tmp_path, "amx_tile amx_bf16"))
    # AVX512 without its BF16 extension emulates bf16: float32 is as fast there
    assert not cpu_has_native_bf16(_cpuinfo(tmp_path, "avx512f avx512bw avx512_vnni"))
    assert not cpu_has_native_bf16(tmp_path / "missing")


def test_native_bf16_follows_onednns_isa_cap(tmp_path: Path) -> None:
    """Held to AVX2 (or AVX512 without BF16), oneDNN converts bfloat16: not native."""
    flags = _cpuinfo(tmp_path, "avx512f avx512_bf16")
    assert cpu_has_native_bf16(flags, {})
    assert not cpu_has_native_bf16(flags, {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert not cpu_has_native_bf16(flags, {"DNNL_MAX_CPU_ISA": "avx512_core_vnni"})
    assert cpu_has_native_bf16(flags, {"ONEDNN_MAX_CPU_ISA": "avx512_core_bf16"})
    assert cpu_has_native_bf16(flags, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"})


def test_auto_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    import targets.reference.models as models

    assert default_dtype("cuda") == "bfloat16"
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert default_dtype("cpu") == "bfloat16"
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert default_dtype("cpu") == "float32"


def test_quantized_formats_compute_in_bfloat16_on_the_cpu(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"--quantize int8 computes in bfloat16 .*drop --dtype "
                                         "float32"):
        load_model(tmp_path, "cpu", "float32", "int8")
    with pytest.raises(ModelError, match=r"--quantize int4 runs torch.s CPU .*drop it on CUDA"):
        load_model(tmp_path, "cuda", "auto", "int4")
    with pytest.raises(ModelError, match="--quantize 'int3': expected none, fp16w, int8, int4"):
        load_model(tmp_path, "cpu", "auto", "int3")
    with pytest.raises(ModelError, match="--quantize fp16w computes in float32; drop --dtype "
                                         "bfloat16"):
        load_model(tmp_path, "cpu", "bfloat16", "fp16w")
    with pytest.raises(ModelError, match="--quantize fp16w runs FBGEMM's CPU kernel; drop it "
                                         "on CUDA"):
        load_model(tmp_path, "cuda", "auto", "fp16w")


def test_dtype_auto_weighs_fidelity_then_speed() -> None:
    """--dtype auto: on the CPU float32 arithmetic, its weights in float16 where they can be
    (decided once loaded); bfloat16 on CUDA; float32 with --weight-layout plain."""
    from targets.reference.models import _auto_dtype

    assert _auto_dtype("cpu", "auto") == ("float32", "auto", "--dtype auto")
    assert _auto_dtype("cuda", "auto") == ("bfloat16", None, "--dtype auto: bfloat16 on cuda")
    assert _auto_dtype("cpu", "plain")[:2] == ("float32", None)


def test_the_conversion_parses_a_gguf_file_once_and_only_while_converting(tmp_path: Path) -> None:
    import gguf

    from targets.reference.models import _gguf_read_once

    path = tmp_path / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    original = gguf.GGUFReader
    with _gguf_read_once():
        first = gguf.GGUFReader(str(path))
        assert gguf.GGUFReader(str(path)) is first  # transformers' second and third reads
        assert first.fields["general.architecture"].contents() == "llama"
    assert gguf.GGUFReader is original
    assert gguf.GGUFReader(str(path)) is not first


def test_loading_a_model_does_not_import_torch_dynamo() -> None:
    """A worker's cold start: building the model under the meta-device mode must not run
    torch's Python reference kernels, whose first use imports torch._dynamo (3.6 s of an
    8.5 s worker start on a 2-core EPYC). Checked in a fresh interpreter."""
    import subprocess
    import sys

    from targets.reference.models import ensure_tiny_folder

    code = ("import sys; from targets.reference.models import load_model; "
            f"load_model(__import__('pathlib').Path({str(ensure_tiny_folder())!r}), 'cpu', "
            "'float32'); print(sorted(m for m in ('torch._dynamo', "
            "'torch.fx.experimental.symbolic_shapes') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr
