"""Per-run statistics of speculative decoding, collected without prints or syncs in the loop math.

Timing is opt-in: a `PhaseClock` with `sync=True` synchronises the device at phase boundaries
(needed for honest GPU splits; it costs overlap, so benchmarks time whole runs separately).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


class PhaseClock:
    """Accumulates wall time per phase ("draft", "verify", "other"). Disabled: costs nothing."""

    def __init__(self, enabled: bool = False, sync: bool = False):
        self.enabled, self.sync = enabled, sync
        self.totals: dict[str, float] = {}
        self._phase, self._t = None, 0.0

    def phase(self, name: str | None) -> None:
        if not self.enabled:
            return
        if self.sync and torch.cuda.is_available():
            torch.cuda.synchronize()  # host sync: only when timing splits was asked for
        now = time.perf_counter()
        if self._phase is not None:
            self.totals[self._phase] = self.totals.get(self._phase, 0.0) + now - self._t
        self._phase, self._t = name, now


@dataclass
class SpecStats:
    """Accepted levels per round and target calls per user, for one decoding run."""

    accepted: list[torch.Tensor] = field(default_factory=list)  # per round: (B,) levels accepted (-1: user inactive)
    times: dict[str, float] = field(default_factory=dict)  # seconds per phase, if a clock was on

    def record_round(self, accepted: torch.Tensor, active: torch.Tensor) -> None:
        self.accepted.append(torch.where(active, accepted, torch.full_like(accepted, -1)))

    def _table(self) -> torch.Tensor:
        return torch.stack(self.accepted, dim=1).cpu() if self.accepted else torch.zeros(0, 0, dtype=torch.long)

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
            "times": dict(self.times),
        }

    def merge(self, other: "SpecStats") -> "SpecStats":
        """Stats of two batches of users: rounds are padded with inactive entries."""
        a, b = self._table(), other._table()
        n = max(a.shape[1] if a.numel() else 0, b.shape[1] if b.numel() else 0)
        pad = lambda x: torch.cat([x, torch.full((x.shape[0], n - x.shape[1]), -1, dtype=torch.long)], 1)  # noqa: E731
        rows = [pad(x) for x in (a, b) if x.numel()]
        out = SpecStats(accepted=list(torch.cat(rows, 0).unbind(1)) if rows else [])
        out.times = {k: self.times.get(k, 0.0) + other.times.get(k, 0.0) for k in set(self.times) | set(other.times)}
        return out
