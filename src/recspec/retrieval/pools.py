"""Customized retrieval pools (LASER section 3): one small n-gram index per group of users or items, so
a lookup's cost follows its group's pool and its drafts come from similar outputs. Group ids are ints
>= 0; a single global pool is group 0. All groups compile into ONE device table: the group is part of
every key, so a batch mixing groups is one lookup.
"""

from __future__ import annotations

from typing import Sequence

from recspec.decoding.retrieval_table import DEFAULT_PROBES, RetrievalTable, TreeRows, build_table
from recspec.retrieval.index import DEFAULT_MAX_NODES, DraftNodes, NGramIndex


class Pools:
    """{group id: NGramIndex}, each made on its first insert with the shared context, depth and cap."""

    def __init__(self, context: int = 2, depth: int = 8, max_nodes: int = DEFAULT_MAX_NODES):
        self.context, self.depth, self.max_nodes = context, depth, max_nodes  # max_nodes: per group
        self._pools: dict[int, NGramIndex] = {}
        self.dropped = 0  # contexts the last compile / sync could not place (all groups)

    def insert(self, group: int, tokens: Sequence[int], source: str = "output") -> None:
        """Count `tokens`' n-grams in `group`'s pool ("output" or "prompt" counts)."""
        if group < 0:
            raise ValueError(f"group ids are >= 0, got {group}")
        if group not in self._pools:
            self._pools[group] = NGramIndex(self.context, self.depth, self.max_nodes)
        self._pools[group].insert(tokens, source)

    def pool(self, group: int) -> NGramIndex | None:
        """The group's index, None if nothing was inserted into it."""
        return self._pools.get(group)

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(sorted(self._pools))

    @property
    def num_nodes(self) -> dict[int, int]:
        """{group: n-gram nodes in its pool}."""
        return {g: self._pools[g].num_nodes for g in self.groups}

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self._pools.values())

    def draft(self, group: int, last_tokens: Sequence[int], budget: int, width: int, depth: int) -> DraftNodes:
        """The host walk of `group`'s pool (`NGramIndex.draft`); an unknown group drafts nothing."""
        pool = self._pools.get(group)
        return DraftNodes.none() if pool is None else pool.draft(last_tokens, budget, width, depth)

    def compile(self, budget: int, width: int, depth: int, capacity: int | None = None,
                probes: int = DEFAULT_PROBES, device="cpu") -> RetrievalTable:
        """One table of every group's contexts (see `build_table` for capacity); clears every `dirty`."""
        if depth > self.depth:
            raise ValueError(f"depth {depth} exceeds the pools' depth {self.depth} (levels kept below a context)")
        parts = [self._pools[g].rows(self._pools[g].contexts(), budget, width, depth, g) for g in self.groups]
        table, self.dropped = build_table(TreeRows.cat(parts, depth, width), self.context, budget, capacity,
                                          probes, device)
        for p in self._pools.values():
            p.clear_dirty()
        return table

    def sync(self, table: RetrievalTable) -> int:
        """Each group's changed contexts rewritten into `table` in place (`NGramIndex.sync`) -> rows written."""
        written, self.dropped = 0, 0
        for g in self.groups:
            written += self._pools[g].sync(table, g)
            self.dropped += self._pools[g].dropped
        return written
