"""evaluation/timing.py on the CPU: the phase profiler runs a round's public phases one by one and leaves
exactly the beams `engine.round` leaves; GPU-only figures are nan / {} elsewhere. No assertion reads the
clock's values beyond their being finite and non-negative."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recspec.config import DecodeConfig
from recspec.data.sids import SIDIndex
from recspec.data.trie import build_trie
from recspec.data.vocab import Vocab, build_prompts
from recspec.decoding.engine import build_engine
from recspec.evaluation.timing import (PHASES, ar_step_ms, copy_bandwidth, kernel_profile, phase_ms,
                                       step_floor_ms)

pytestmark = pytest.mark.usefixtures("one_thread")

# 41 items over 4 levels of 3 codes (every code tuple of even sum): with one drafted level per round, the
# round after the first still drafts one (a user is at level 2 at most after the first round)
INDEX = SIDIndex(codes=np.array([c for c in np.ndindex(3, 3, 3, 3) if sum(c) % 2 == 0]), level_sizes=(3, 3, 3, 3),
                 prefixes=("a", "b", "c", "d"))
VOCAB = Vocab.for_index(INDEX)
HISTORIES = [[0, 5, 9], [3, 3, 17, 30], [31], [8, 1, 2, 4, 6]]


def engine(make_decoder, draft: str | None, fixed: bool):
    target = make_decoder(VOCAB, seed=1)
    d = make_decoder(VOCAB, seed=2) if draft == "model" else draft
    cfg = DecodeConfig(K=3).replace(draft_beams=6, gamma=1, fixed_shapes=fixed)
    return build_engine(target, build_trie(INDEX, VOCAB), cfg, d)


def beams_of(eng) -> tuple[torch.Tensor, ...]:
    return tuple(t.clone() for t in eng.beams.tensors())


@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("draft", [None, "trie", "model"])
def test_phases_one_by_one_leave_the_beams_of_engine_round(make_decoder, draft, fixed):
    prompts = build_prompts(VOCAB, INDEX, HISTORIES)
    ref = engine(make_decoder, draft, fixed)
    ref.load(prompts)
    first = ref.plan(0, True)
    ref.round(first)
    after_first = beams_of(ref)
    later = ref.plan(int(ref.beams.level.min()), False)
    ref.round(later)
    assert draft is None or later.d > 0  # the round after the first drafts a tree too

    eng = engine(make_decoder, draft, fixed)
    for plan, want in ((first, after_first), (later, beams_of(ref))):
        figures = phase_ms(eng, prompts, plan, reps=3)  # each phase run 3 times: repeats write the same values
        assert list(figures) == list(PHASES)
        assert all(math.isfinite(v) and v >= 0 for v in figures.values()), figures
        assert all(torch.equal(a, b) for a, b in zip(beams_of(eng), want)), plan
        if plan.first:  # the phases committed the first round's KV as the engine would: its next round agrees
            eng.round(later)
            assert all(torch.equal(a, b) for a, b in zip(beams_of(eng), beams_of(ref)))


def test_gpu_figures_are_nan_or_empty_off_the_gpu(make_decoder):
    prompts = build_prompts(VOCAB, INDEX, HISTORIES[:1])
    ar = engine(make_decoder, None, False)
    assert math.isnan(copy_bandwidth("cpu"))
    assert math.isnan(ar_step_ms(ar, prompts))
    assert kernel_profile(ar, prompts) == {}


def test_step_floor_is_weight_bytes_over_bandwidth():
    assert step_floor_ms(10**9, 2, 2e12) == pytest.approx(1.0)  # 2 GB at 2 TB/s: 1 ms
    assert step_floor_ms(5 * 10**8, 4, 1e12) == pytest.approx(2.0)
