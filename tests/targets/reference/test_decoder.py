"""The batched decoder: a packed prefill of several sequences (some resuming from a cached
prefix) gives the same logits and cache as prefilling each on its own."""

from __future__ import annotations

import torch

from targets.reference.decoder import BatchDecoder
from targets.reference.llama import load_llama
from targets.reference.models import ensure_tiny_folder


def test_packed_prefill_equals_one_by_one() -> None:
    model = load_llama(ensure_tiny_folder(), torch.float32, "cpu")
    alone, packed = BatchDecoder(model, 8, 128), BatchDecoder(model, 8, 128)
    shared = list(range(100, 131))
    prompts = [shared + [200 + i, 300 + i] * (i + 1) for i in range(4)] + [list(range(600, 640))]
    expected = torch.stack([alone.prefill(slot, p) for slot, p in enumerate(prompts)])

    packed.prefill(7, shared)
    saved = packed.save_prefix(7, len(shared))
    items = []
    for slot, prompt in enumerate(prompts):
        start = len(shared) if slot < 4 else 0
        if start:
            packed.load_prefix(slot, saved, start)
        items.append((slot, prompt, start))
    got = packed.prefill_many(items)
    assert torch.allclose(got, expected, atol=1e-4)
    # the caches agree too: the next decode step gives the same logits
    tokens = expected.argmax(dim=-1)
    positions = torch.tensor([len(p) for p in prompts])
    assert torch.allclose(packed.decode(tokens, positions), alone.decode(tokens, positions),
                          atol=1e-4)
