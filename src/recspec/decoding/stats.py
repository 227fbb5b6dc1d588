"""Per-run statistics of speculative decoding: accepted levels per round, returned, never printed.

Recorded without syncs: the engine appends each round's (B,) tensor; reading happens after the run.
Timing is measurement, not decoding: `evaluation/timing.py` times runs and single phases from outside.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SpecStats:
    """Accepted levels per round and target calls per user, for one decoding run."""

    accepted: list[torch.Tensor] = field(default_factory=list)  # per round: (B,) levels accepted (-1: user inactive)

    def record_round(self, accepted: torch.Tensor) -> None:
        """accepted (B,): levels accepted this round, -1 for users that had finished before it."""
        self.accepted.append(accepted.clone())

    def _table(self) -> torch.Tensor:
        return torch.stack(self.accepted, dim=1).cpu() if self.accepted else torch.zeros(0, 0, dtype=torch.long)

    def table(self) -> torch.Tensor:
        """(B, rounds) levels accepted per user and round, -1 where the user was inactive (on the CPU)."""
        return self._table()

    def target_calls(self) -> torch.Tensor:
        """(B,) target forward passes each user took part in."""
        return (self._table() >= 0).sum(dim=1)

    def summary(self) -> dict:
        t = self._table()
        active = t >= 0
        acc = t[active].float()
        hist = torch.bincount(t[active], minlength=1).tolist() if active.any() else []
        return {
            "rounds": int(t.shape[1]),
            "accepted_levels": float(acc.mean()) if acc.numel() else 0.0,  # per round, per user
            "target_calls": float(self.target_calls().float().mean()) if t.numel() else 0.0,  # per user
            "accept_hist": hist,  # rounds that accepted 0, 1, 2, ... levels
        }

    def merge(self, other: "SpecStats") -> "SpecStats":
        """Stats of two batches of users: rounds are padded with inactive entries."""
        a, b = self._table(), other._table()
        n = max(a.shape[1] if a.numel() else 0, b.shape[1] if b.numel() else 0)
        pad = lambda x: torch.cat([x, torch.full((x.shape[0], n - x.shape[1]), -1, dtype=torch.long)], 1)  # noqa: E731
        rows = [pad(x) for x in (a, b) if x.numel()]
        return SpecStats(accepted=list(torch.cat(rows, 0).unbind(1)) if rows else [])
