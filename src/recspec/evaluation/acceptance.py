"""Where speculation is accepted: per draft depth and per item slot, from a run's accepted levels per round.

A round that starts at level l (tokens produced so far) drafts d = min(gamma, end - 1 - l) levels; it accepts
a levels (0 <= a <= d), then the target adds its own, so the next round starts at l + a + 1. Depth j of that
round is *reached* when a >= j and *accepted* when a > j. The token at depth j is the list's token number
l + j; its slot inside an item is (l + j) mod (L + 1): 0..L-1 the SID levels, L the end-of-item token.

Slots are grouped as the ablation reports them: "level1" (slot 0), "deeper" (1..L-1), "separator" (L).
Pure: tensors in, numbers out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SLOT_GROUPS = ("level1", "deeper", "separator")


def slot_group(slot: int, L: int) -> str:
    """A slot (0..L) -> its reporting group."""
    return "level1" if slot == 0 else "separator" if slot == L else "deeper"


@dataclass(frozen=True)
class AcceptanceProfile:
    by_depth: tuple[float, ...]  # P(accepted at depth j | reached), j = 0..gamma-1 (nan: never reached)
    reached_depth: tuple[int, ...]  # (user, round) pairs that reached depth j
    by_slot: dict[str, float]  # P(accepted | reached) over the tokens of each slot group
    reached_slot: dict[str, int]

    def columns(self) -> dict:
        """Flat results columns: accept_d0.. and accept_slot_level1 / _deeper / _separator."""
        out = {f"accept_d{j}": round(p, 4) for j, p in enumerate(self.by_depth)}
        out.update({f"accept_slot_{g}": round(p, 4) for g, p in self.by_slot.items()})
        return out


def acceptance_profile(accepted: torch.Tensor, gamma: int, end: int, L: int) -> AcceptanceProfile:
    """accepted (B, R): levels accepted per user and round (-1: the user was done; `SpecStats` stacked),
    gamma the tree depth, end the levels of a finished list (M * (L + 1)), L the SID levels per item."""
    reach_d, acc_d = [0] * gamma, [0] * gamma
    reach_s, acc_s = dict.fromkeys(SLOT_GROUPS, 0), dict.fromkeys(SLOT_GROUPS, 0)
    for row in accepted.tolist():
        level = 0
        for a in row:
            if a < 0 or level >= end:
                break
            d = min(gamma, end - 1 - level)
            for j in range(min(a + 1, d)):  # depths reached: 0..a (a < d), or all d
                g = slot_group((level + j) % (L + 1), L)
                reach_d[j], reach_s[g] = reach_d[j] + 1, reach_s[g] + 1
                if a > j:
                    acc_d[j], acc_s[g] = acc_d[j] + 1, acc_s[g] + 1
            level += a + 1
    rate = lambda k, n: k / n if n else float("nan")  # noqa: E731
    return AcceptanceProfile(tuple(rate(a, n) for a, n in zip(acc_d, reach_d)), tuple(reach_d),
                             {g: rate(acc_s[g], reach_s[g]) for g in SLOT_GROUPS}, reach_s)
