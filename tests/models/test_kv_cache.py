"""KVCache.write / copy_slots / select_batch on small tensors, against plain loops."""

from __future__ import annotations

import pytest
import torch

from recspec.models.kv_cache import KVCache

LAYERS, B, HKV, S, D = 2, 3, 2, 8, 4


def filled_cache(seed: int = 0) -> KVCache:
    """Every entry distinct, so any misplaced copy shows."""
    gen = torch.Generator().manual_seed(seed)
    shape = (LAYERS, B, HKV, S, D)
    return KVCache(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))


def test_empty_shapes():
    cache = KVCache.empty(LAYERS, B, HKV, S, D, dtype=torch.float16)
    assert cache.k.shape == cache.v.shape == (LAYERS, B, HKV, S, D)
    assert cache.k.dtype == torch.float16 and cache.slots == S
    assert not cache.k.any() and not cache.v.any()


def test_write_puts_each_token_in_its_slot():
    cache = KVCache.empty(LAYERS, B, HKV, S, D)
    slots = torch.tensor([[0, 1, 2], [7, 3, 5], [6, 0, 4]])  # (B, Q) a different layout per row
    k = torch.randn(B, HKV, 3, D)
    v = torch.randn(B, HKV, 3, D)
    cache.write(1, slots, k, v)
    want_k = torch.zeros(LAYERS, B, HKV, S, D)
    want_v = torch.zeros(LAYERS, B, HKV, S, D)
    for b in range(B):
        for q in range(3):
            want_k[1, b, :, slots[b, q]] = k[b, :, q]
            want_v[1, b, :, slots[b, q]] = v[b, :, q]
    assert torch.equal(cache.k, want_k)  # layer 0 and the other slots are untouched
    assert torch.equal(cache.v, want_v)


def test_write_overwrites_and_casts():
    cache = KVCache.empty(1, 1, 1, 4, 2, dtype=torch.float16)
    cache.write(0, torch.tensor([[2]]), torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2))
    cache.write(0, torch.tensor([[2]]), torch.full((1, 1, 1, 2), 3.0), torch.full((1, 1, 1, 2), 4.0))
    assert cache.k.dtype == torch.float16
    assert cache.k[0, 0, 0, :, 0].tolist() == [0, 0, 3, 0]
    assert cache.v[0, 0, 0, :, 0].tolist() == [0, 0, 4, 0]


def reference_copy(cache: KVCache, src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every destination gets its source's value from before the call."""
    k, v = cache.k.clone(), cache.v.clone()
    for b in range(src.shape[0]):
        for m in range(src.shape[1]):
            k[:, b, :, dst[b, m]] = cache.k[:, b, :, src[b, m]]
            v[:, b, :, dst[b, m]] = cache.v[:, b, :, src[b, m]]
    return k, v


@pytest.mark.parametrize("src,dst", [
    pytest.param([[4, 6], [2, 7], [5, 5]], [[0, 1], [3, 4], [6, 7]], id="disjoint"),
    pytest.param([[2, 3, 4]] * 3, [[1, 2, 3]] * 3, id="shift-down-overlapping"),
    pytest.param([[1, 2, 3]] * 3, [[2, 3, 4]] * 3, id="shift-up-overlapping"),
    pytest.param([[0, 1], [5, 3], [2, 6]], [[1, 0], [3, 5], [6, 2]], id="swaps"),
    pytest.param([[3, 4, 5], [0, 1, 2], [7, 6, 5]], [[3, 4, 5], [1, 2, 3], [5, 6, 7]], id="identity-and-mixed"),
])
def test_copy_slots(src, dst):
    cache = filled_cache()
    src, dst = torch.tensor(src), torch.tensor(dst)
    want_k, want_v = reference_copy(cache, src, dst)
    cache.copy_slots(src, dst)
    assert torch.equal(cache.k, want_k)
    assert torch.equal(cache.v, want_v)


def test_copy_slots_one_source_to_many():
    cache = filled_cache()
    src, dst = torch.tensor([[2, 2, 2]] * B), torch.tensor([[2, 5, 6]] * B)
    want_k, want_v = reference_copy(cache, src, dst)
    cache.copy_slots(src, dst)
    assert torch.equal(cache.k, want_k) and torch.equal(cache.v, want_v)
    assert torch.equal(cache.k[:, :, :, 5], cache.k[:, :, :, 2])


def test_select_batch():
    cache = filled_cache()
    rows = torch.tensor([2, 0])
    sub = cache.select_batch(rows)
    assert torch.equal(sub.k, cache.k[:, [2, 0]]) and torch.equal(sub.v, cache.v[:, [2, 0]])
    sub.k.zero_()  # a copy: the original keeps its values
    assert cache.k[:, 2].abs().sum() > 0
