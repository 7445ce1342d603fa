"""Greedy output of SmolLM2 in the default format (fp16w on the CPU), bfloat16 and weight-only
int4 against the fp32 reference.

The fp32 reference runs through the real batched engine, in process: every bundled prompt
submitted at once (chat template, greedy, up to 64 tokens, EOS honoured), as a worker would
serve them. Each format is measured two ways (targets/reference/fidelity.py): free-running
(the share of fp32's tokens it repeats before its first difference; one near-tie flipped
early costs the rest of an output, so this compounds) and teacher-forced (fed fp32's output,
how often its greedy choice is fp32's next token: the per-token fidelity).
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.loadgen.prompt_set import PROMPTS
from targets.reference.fidelity import EOS, agreement, greedy_tokens, teacher_forced
from targets.reference.models import cpu_has_native_bf16

# timings or every core: runs alone, not beside another test (make test: solo phase)
pytestmark = pytest.mark.solo

# bf16 is the worker's default only where the CPU computes it natively (AVX512-BF16, AMX);
# elsewhere it serves float32 and bf16 is emulated: the test takes 2.5 minutes on a 2-core
# AVX2-only EPYC, so there it runs in make test-all (the int4 test below keeps fidelity covered)
_SLOW_WITHOUT_NATIVE_BF16 = pytest.mark.slow if not cpu_has_native_bf16() else pytest.mark.smollm2

MAX_TOKENS = 64
GOAL = 0.95
# issue 17's fidelity goals, for the format --dtype auto picks
FREE_RUNNING_GOAL = 0.90
TEACHER_FORCED_GOAL = 0.99
# measured 2026-11-28 on a 2-core AVX512-BF16 Xeon: 0.825, 22 of 32 outputs identical, with
# the float32 residual stream and head rescoring of decoder.py (0.533 and 10 of 32 before
# them); teacher-forced 0.993 (0.975 before). 2026-12-06, same CPU: 0.822, 0.992.
MEASURED_BF16 = 0.825
# int4 (quant.py) teacher-forced: 0.988 on 2026-12-06 (same CPU); the floor is there to catch
# a packing or scale error, not to hold the last 0.01
INT4_FLOOR = 0.98


def _model(dtype: str, quantize: str | None = None) -> tuple[Any, Any]:
    from targets.reference.models import ensure_smollm2_folder, load_model

    return load_model(ensure_smollm2_folder(), "cpu", dtype, quantize)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def reference() -> list[list[int]]:
    """fp32's greedy tokens on the bundled prompts."""
    return greedy_tokens(*_model("float32"), PROMPTS, MAX_TOKENS)


def test_agreement_counts_tokens_before_the_first_difference() -> None:
    assert agreement([[1, 2, 3, 4]], [[1, 2, 3, 4]]) == 1.0
    assert agreement([[1, 2, 3, 4], [5, 6]], [[1, 9, 3, 4], [5, 6]]) == 3 / 6
    assert agreement([[1, 2, EOS]], [[1, 2, 7, 8]]) == 2 / 3  # bf16 missed the EOS
    assert agreement([[1, 2, 3]], [[1, EOS]]) == 1 / 3  # bf16 stopped early


@pytest.mark.smollm2
@pytest.mark.timeout(900)
def test_the_default_format_keeps_fp32s_greedy_outputs(reference: list[list[int]]) -> None:
    """--dtype auto (on CPUs with AVX2: float16 weights computed in float32, prepack.py)
    meets issue 17's fidelity goals against float32, through the real batched engine and the
    worker's decoder."""
    from targets.reference.quant import describe_weights

    model, tok = _model("auto")
    fmt = describe_weights(model)["format"]
    own = greedy_tokens(model, tok, PROMPTS, MAX_TOKENS)
    free = agreement(reference, own)
    identical = sum(a == b for a, b in zip(reference, own, strict=True))
    share, judged = teacher_forced(model, tok, reference, PROMPTS)
    print(f"{fmt} vs fp32: free-running {free:.3f} ({identical}/{len(PROMPTS)} identical), "
          f"teacher-forced {share:.3f} of {judged} positions")
    assert free >= FREE_RUNNING_GOAL and share >= TEACHER_FORCED_GOAL, (
        f"--dtype auto ({fmt}) keeps {free:.1%} of fp32's greedy tokens before the first "
        f"difference ({identical}/{len(PROMPTS)} identical) and picks its next token at "
        f"{share:.1%} of {judged} positions (goals {FREE_RUNNING_GOAL:.0%} and "
        f"{TEACHER_FORCED_GOAL:.0%})")


@_SLOW_WITHOUT_NATIVE_BF16
@pytest.mark.smollm2
@pytest.mark.timeout(900)
def test_bf16_teacher_forced_tokens_match_fp32(reference: list[list[int]]) -> None:
    """Given the same text, bf16 picks fp32's greedy token at >= 95% of positions."""
    # the measure itself: fp32 fed its own output agrees with itself (batched decode of 32
    # sequences against the engine's own run: only summation-order noise)
    own, judged = teacher_forced(*_model("float32"), reference, PROMPTS)
    assert own >= 0.99, f"fp32 teacher-forced on its own output agrees at {own:.1%} only"
    share, judged = teacher_forced(*_model("bfloat16"), reference, PROMPTS)
    print(f"bf16 vs fp32, teacher-forced: {share:.3f} of {judged} positions")
    assert share >= GOAL, (f"bf16 picks fp32's next token at {share:.1%} of {judged} "
                           f"positions (goal {GOAL:.0%})")


@pytest.mark.smollm2
@pytest.mark.timeout(900)
def test_int4_teacher_forced_tokens_match_fp32(reference: list[list[int]]) -> None:
    """Weight-only int4 through torch's packed CPU kernel: the real decoder path, the real
    weights."""
    share, judged = teacher_forced(*_model("auto", "int4"), reference, PROMPTS)
    print(f"int4 vs fp32, teacher-forced: {share:.3f} of {judged} positions")
    assert share >= INT4_FLOOR, (f"int4 picks fp32's next token at {share:.1%} of {judged} "
                                 f"positions (measured 98.8%)")


# make test-all: a known shortfall measured (xfail); the teacher-forced agreement above runs
# by default
@pytest.mark.slow
@pytest.mark.smollm2
@pytest.mark.timeout(900)
@pytest.mark.xfail(strict=True, reason=f"issue 9: bf16 keeps {MEASURED_BF16:.1%} of fp32's "
                                       f"greedy tokens on the bundled prompts (goal "
                                       f"{GOAL:.0%}); a fix makes this pass and must drop the mark")
def test_bf16_greedy_tokens_match_fp32(reference: list[list[int]]) -> None:
    bf16 = greedy_tokens(*_model("bfloat16"), PROMPTS, MAX_TOKENS)
    share = agreement(reference, bf16)
    identical = sum(a == b for a, b in zip(reference, bf16, strict=True))
    print(f"bf16 vs fp32: {share:.3f} of tokens before the first difference; "
          f"{identical}/{len(PROMPTS)} outputs identical")
    assert share >= GOAL, (f"bf16 keeps {share:.1%} of fp32's greedy tokens before the first "
                           f"difference (goal {GOAL:.0%}); {identical}/{len(PROMPTS)} identical")
