"""The TorchScript layer loops (targets/reference/scripted.py: fp16w, and projections in
oneDNN's layout) against the Python loop they mirror: the same logits and the same cache, to
the bit."""

from __future__ import annotations

import pytest
import torch

from targets.reference.prepack import _dtype_refusal, fp16_refusal

_NO_FP16 = fp16_refusal()
_REFUSAL = {"auto": _NO_FP16, "float32": _dtype_refusal(torch.float32),
            "bfloat16": _dtype_refusal(torch.bfloat16)}


@pytest.mark.parametrize(("model_name", "dtype"), [
    ("tiny", "auto"), ("tiny", "float32"), ("tiny", "bfloat16"),
    pytest.param("smollm2", "auto", marks=pytest.mark.smollm2),
    pytest.param("smollm2", "bfloat16", marks=pytest.mark.smollm2)])
def test_the_scripted_loop_decodes_what_the_python_loop_does(model_name: str,
                                                              dtype: str) -> None:
    """fp16w (--dtype auto), and float32 / bfloat16 packed in oneDNN's layout."""
    from targets.reference.decoder import BatchDecoder
    from targets.reference.models import ensure_tiny_folder, load_model, resolve_model

    if _REFUSAL[dtype] is not None:
        pytest.skip(f"{dtype} is not packed here: {_REFUSAL[dtype]}")
    folder = ensure_tiny_folder() if model_name == "tiny" else resolve_model("smollm2").path
    model, _ = load_model(folder, "cpu", dtype)
    scripted, python = BatchDecoder(model, 4, 96), BatchDecoder(model, 4, 96)
    assert scripted._scripted is not None
    python._scripted = None  # the Python loop
    prompts = [(0, list(range(40, 60)), 0), (1, list(range(300, 307)), 0),
               (2, list(range(90, 101)), 0)]
    for decoder in (scripted, python):
        decoder.prefill_many(prompts)
    positions = torch.tensor([20, 7, 11])
    for step in range(6):
        rows = 1 if step < 3 else 3  # one sequence (plain-index cache writes), then three
        tokens = torch.tensor([5 + step, 17, 23][:rows])
        got = scripted.decode(tokens, positions[:rows])
        want = python.decode(tokens, positions[:rows])
        assert torch.equal(got, want), f"step {step}: {(got - want).abs().max().item()}"
        positions[:rows] += 1
    for a, b in zip(scripted.k_cache + scripted.v_cache, python.k_cache + python.v_cache,
                    strict=True):
        assert torch.equal(a, b)


def test_quantized_and_plain_models_keep_the_python_loop() -> None:
    from targets.reference.decoder import BatchDecoder
    from targets.reference.models import ensure_tiny_folder, load_model

    for dtype, quantize, layout in (("auto", "int4", "auto"), ("auto", "auto", "auto"),
                                    ("float32", None, "plain")):
        model, _ = load_model(ensure_tiny_folder(), "cpu", dtype, quantize, layout=layout)
        assert BatchDecoder(model, 2, 32)._scripted is None


@pytest.mark.skipif(_NO_FP16 is not None, reason=f"no fp16w here: {_NO_FP16}")
def test_a_failing_scripted_loop_hands_over_to_python(capsys: pytest.CaptureFixture[str]) -> None:
    """If TorchScript fails in a step, that step and the next run the Python loop, with the
    logits the scripted loop would have given."""
    from targets.reference.decoder import BatchDecoder
    from targets.reference.models import ensure_tiny_folder, load_model

    model, _ = load_model(ensure_tiny_folder(), "cpu", "auto")
    broken, sound = BatchDecoder(model, 2, 32), BatchDecoder(model, 2, 32)

    def fail(*args: object) -> None:
        raise RuntimeError("the interpreter gave up")

    broken._scripted = fail
    for decoder in (broken, sound):
        decoder.prefill_many([(0, [5, 6, 7], 0)])
    for pos in (3, 4):
        got = broken.decode(torch.tensor([9]), torch.tensor([pos]))
        assert torch.equal(got, sound.decode(torch.tensor([9]), torch.tensor([pos])))
    assert broken._scripted is None and sound._scripted is not None
    assert "the TorchScript layer loop failed (the interpreter gave up)" in capsys.readouterr().err
