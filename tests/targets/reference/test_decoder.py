"""The batched decoder: a packed prefill of several sequences (some resuming from a cached
prefix) gives the same logits and cache as prefilling each on its own."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import pytest
import torch

from targets.reference.decoder import BatchDecoder, _lazy_zeros
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


def _resident_bytes(tensor: torch.Tensor) -> int:
    """How much of `tensor`'s memory is resident, page by page (mincore(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    page = os.sysconf("SC_PAGE_SIZE")
    start = tensor.data_ptr() // page * page
    end = tensor.data_ptr() + tensor.numel() * tensor.element_size()
    pages = (end - start + page - 1) // page
    vec = (ctypes.c_ubyte * pages)()
    if libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(end - start), vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return sum(v & 1 for v in vec) * page


def _vm_flags(address: int) -> list[str]:
    """The kernel's VmFlags of the mapping that holds `address` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split(maxsplit=1)[0]
        if "-" in first and not first.endswith(":"):  # a mapping's header: start-end perms ...
            start, end = (int(x, 16) for x in first.split("-"))
            inside = start <= address < end
        elif inside and first == "VmFlags:":
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(sys.platform != "linux", reason="mincore, smaps and huge pages as on Linux")
def test_the_kv_cache_is_resident_only_where_written() -> None:
    """48 (slot, head) rows of 2048 positions (12 MiB in bfloat16), 10 positions written in
    each: 48 pages of 4 KiB. numpy.zeros asked for huge pages (MADV_HUGEPAGE), and with
    transparent huge pages on `madvise` or `always` every 2 MiB written to became resident:
    6 short streams held 326 MiB of SmolLM2's cache instead of 25 MiB. The mapping's `nh`
    flag (no huge pages) shows the request whatever the machine's huge page setting."""
    cache = _lazy_zeros((16, 3, 2048, 64), torch.bfloat16, torch.device("cpu"))
    assert "nh" in _vm_flags(cache.data_ptr())
    assert _resident_bytes(cache) == 0
    cache[:, :, :10] = 1.0
    assert _resident_bytes(cache) <= 48 * 4096 * 2, _resident_bytes(cache)
    assert cache.sum().item() == 16 * 3 * 10 * 64 and cache[:, :, 10:].abs().sum().item() == 0
