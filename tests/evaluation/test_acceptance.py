"""Per-depth and per-slot acceptance from accepted levels per round, on hand-built runs."""

from __future__ import annotations

import math

import torch

from recspec.evaluation.acceptance import acceptance_profile, slot_group


def test_slot_groups():
    assert [slot_group(s, 3) for s in range(4)] == ["level1", "deeper", "deeper", "separator"]


def test_depths_reached_and_accepted_by_hand():
    """L = 2 (slot period 3), end = 6, gamma = 2. User 0: round at level 0 accepts 2 (depths 0, 1 reached and
    accepted; slots 0, 1), next at level 3 accepts 0 (depth 0 reached at slot 0, rejected), next at level 4:
    d = min(2, 1) = 1, accepts 1 (depth 0 at slot 1 accepted), level 6 = end. User 1: one round accepting 1
    (depth 0 accepted at slot 0, depth 1 reached at slot 1, rejected), then done (-1s)."""
    acc = torch.tensor([[2, 0, 1], [1, -1, -1]])
    p = acceptance_profile(acc, gamma=2, end=6, L=2)
    assert p.reached_depth == (4, 2)
    assert p.by_depth == (3 / 4, 1 / 2)
    assert p.reached_slot == {"level1": 3, "deeper": 3, "separator": 0}
    assert p.by_slot["level1"] == 2 / 3 and p.by_slot["deeper"] == 2 / 3 and math.isnan(p.by_slot["separator"])
    assert p.columns()["accept_d0"] == 0.75


def test_separator_slot_is_counted():
    """L = 1: slots alternate item, separator; a round at level 0 accepting 2 of gamma 3 (end 4) reaches slots
    0, 1, 0 and accepts the first two."""
    p = acceptance_profile(torch.tensor([[2]]), gamma=3, end=4, L=1)
    assert p.reached_slot == {"level1": 2, "deeper": 0, "separator": 1}
    assert p.by_slot["separator"] == 1.0 and p.by_slot["level1"] == 0.5
