"""The decoding engine: static buffers around `spec_round`, run eagerly or as CUDA graphs.

Every tensor the loop touches lives in a buffer allocated once for a (batch, prompt length) shape,
so each round shape (first round or not, draft depth d) can be captured once as a CUDA graph and
replayed. The only host synchronisation is one read of the users' levels per speculative round, which
decides whether to stop and how deep the next tree is (marked below); AR needs none. gamma = 0 gives autoregressive
beam search through the same code: L rounds (L + 1 with eos).
"""

from __future__ import annotations

import torch

from recspec.data.exclusion import banned_states
from recspec.data.trie import SIDTrie
from recspec.data.vocab import PAD, Prompts
from recspec.decoding.beam_search import BeamResult
from recspec.decoding.drafters.base import Drafter
from recspec.decoding.prompt import prompt_key_mask
from recspec.decoding.spec_beam import check_models, initial_beams, spec_round
from recspec.decoding.stats import PhaseClock, SpecStats
from recspec.decoding.tree import Layout, gather_rows
from recspec.models.decoder import Decoder


class SpecEngine:
    def __init__(self, target: Decoder, drafter: Drafter | None, trie: SIDTrie, K: int, N: int, gamma: int,
                 verify: str = "strict", generator: torch.Generator | None = None, cuda_graphs: bool = False,
                 prompt_width: int | None = None, depths: tuple[int, ...] = (), compile: bool = False,
                 widths: tuple[int, ...] = (), fixed_shapes: bool = False, temperature: float = 1.0,
                 eos: bool = False):
        """prompt_width: left-pad every prompt to this many columns, so that batches of different
        prompt lengths share one buffer shape (and one set of CUDA graphs).
        depths: draft depth by the SID level a round starts from (depths[l] for rounds whose slowest
        user has produced l levels; gamma past its end). Wide top levels, where a draft is seldom
        right, can get a shallow tree and narrow deep levels, which a tree covers whole, a deep one.
        widths: most drafted nodes per tree level by the SID level it drafts (widths[l - 1] for level
        l; N past its end; each in 1..N, a wider one is refused). Level 1 has as many codes as the
        trie's root has children, so a tree that holds them all is always accepted there; deep levels
        branch little (`tree_shape.auto_shape` derives both from the trie). The target is fed only these
        widths, also under graphs.
        temperature (relaxed): sample from the target's cumulative log-probs / temperature, so that the
        output follows the target's sampling beam search at that temperature (-> its top-K search as
        temperature -> 0); the draft samples at the same temperature. Strict ignores it.
        fixed_shapes: run rounds with the fixed shapes of graph replay (no trimming, no early exit)
        without capturing anything, so that the CPU can test the math the graphs run.
        compile: run each round through torch.compile (one graph per round shape, fullgraph): fewer,
        fused kernels; with cuda_graphs the compiled round is what is captured. Rounds then keep fixed
        shapes (no tree trimming or early exit), as under graphs.
        eos: also score <eos> after the L codes, as transformers' generate does (AR: L + 1 calls, not L).
        Trees never draft <eos>: a tree reaching level L leaves it to the target's bonus level."""
        gamma = gamma if drafter is not None else 0
        depths = tuple(depths) if drafter is not None else ()
        check_models(target, trie, K, N, gamma, verify)
        if compile and generator is not None:
            raise ValueError("compile=True samples from torch's global RNG (seed it with torch.manual_seed); pass generator=None")
        if any(d < 0 for d in depths):
            raise ValueError(f"draft depths must be >= 0, got {depths}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if any(w < 1 or w > N for w in widths):
            raise ValueError(f"tree widths must be in 1..N = {N} (a tree level holds at most N nodes), got {tuple(widths)}")
        self.depths, self.widths = depths, tuple(widths) if drafter is not None else ()
        self.target, self.drafter, self.trie = target, drafter, trie
        self.K, self.N, self.gamma, self.verify, self.gen = K, N, gamma, verify, generator
        self.temperature, self.eos = float(temperature), eos
        self.gamma_max = max((gamma, *depths))  # tree slots the layout reserves
        self.graphs_on, self.prompt_width = cuda_graphs, prompt_width
        self.static = cuda_graphs or compile or fixed_shapes  # fixed shapes per (first, d, widths): no host sync in a round
        self._round_fn = _compiled_round() if compile else spec_round
        self._shape: tuple[int, int] | None = None
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}

    # --- buffers ------------------------------------------------------------------------------
    def _allocate(self, B: int, T: int, device) -> None:
        L = self.trie.num_levels
        self.lay = Layout(T=T, L=L, K=self.K, N=self.N, gamma=self.gamma_max, eos=self.eos)
        self.prompts = Prompts(torch.full((B, T), PAD, dtype=torch.long, device=device),
                               torch.ones(B, dtype=torch.long, device=device))
        self.keys = torch.zeros(B, self.lay.slots, dtype=torch.bool, device=device)
        self.cache = self.target.new_cache(B, self.lay.slots)
        self.beams = initial_beams(B, self.K, L, self.lay, self.trie.ROOT, device)
        self.accepted = torch.zeros(B, dtype=torch.long, device=device)
        self.banned: torch.Tensor | None = None  # (B, S) bool, allocated by the first run with exclusions
        self._shape, self._graphs = (B, T), {}

    def _load(self, prompts: Prompts, exclude: torch.Tensor | None = None) -> None:
        B, T = prompts.tokens.shape
        if self.prompt_width is not None and T < self.prompt_width:
            pad = prompts.tokens.new_full((B, self.prompt_width - T), PAD)
            prompts = Prompts(torch.cat([pad, prompts.tokens], dim=1), prompts.lengths)
            T = self.prompt_width
        if self._shape != (B, T):
            self._allocate(B, T, prompts.tokens.device)
        self.prompts.tokens.copy_(prompts.tokens)
        self.prompts.lengths.copy_(prompts.lengths)
        self._load_exclusions(exclude)
        if self.drafter is not None:
            self.drafter.start(self.prompts, self.lay)  # binds buffers; its prefill runs in the first round

    def _load_exclusions(self, exclude: torch.Tensor | None) -> None:
        """exclude (B, U) bool SID rows -> the static (B, S) buffer of states each user may not enter."""
        self.masked = exclude is not None
        if not self.masked:
            return
        if exclude.shape != (self.prompts.tokens.shape[0], self.trie.num_sids):
            raise ValueError(f"exclude has shape {tuple(exclude.shape)}, expected (users, SIDs) = "
                             f"{(self.prompts.tokens.shape[0], self.trie.num_sids)}")
        banned = banned_states(self.trie, exclude.to(self.prompts.tokens.device))
        if self.banned is None:
            self.banned = torch.zeros_like(banned)
        self.banned.copy_(banned)

    # --- one round ----------------------------------------------------------------------------
    def _round(self, first: bool, d: int, clock: PhaseClock, widths: tuple[int, ...] | None = None) -> None:
        if first:  # inside the round, so a graph of the first round captures the set-up too
            B, dev = self.prompts.tokens.shape[0], self.prompts.tokens.device
            self.keys.copy_(prompt_key_mask(self.prompts, self.lay.slots))
            self.beams.copy_(initial_beams(B, self.K, self.lay.L, self.lay, self.trie.ROOT, dev))
        active = self.beams.level < self.lay.end
        beams, verdict = self._round_fn(self.target, self.drafter, self.trie, self.lay, self.cache, self.prompts,
                                        self.keys, self.beams, first, d, self.verify, self.gen, clock,
                                        eager=not self.static, widths=widths, temperature=self.temperature,
                                        banned=self.banned if self.masked else None)
        self.beams.copy_(beams)
        self.accepted.copy_(torch.where(active, verdict.accepted, torch.full_like(verdict.accepted, -1)))

    def _replay(self, first: bool, d: int, widths: tuple[int, ...] | None) -> None:
        key = (first, d, widths, self.masked)
        if key not in self._graphs:
            self._graphs[key] = self._capture(first, d, widths)
        self._graphs[key].replay()

    def _capture(self, first: bool, d: int, widths: tuple[int, ...] | None) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream (cuBLAS workspaces etc.), then capture the round."""
        saved = _snapshot(self)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._round(first, d, PhaseClock(), widths)
        torch.cuda.current_stream().wait_stream(side)
        _restore(self, saved)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=getattr(self, "_pool", None)):
            self._round(first, d, PhaseClock(), widths)
        self._pool = graph.pool()
        _restore(self, saved)  # capture does not run the kernels, but keep state explicit
        return graph

    # --- the loop -----------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, prompts: Prompts, clock: PhaseClock | None = None,
            exclude: torch.Tensor | None = None) -> tuple[BeamResult, SpecStats]:
        """prompts (B users) -> top-K items per user and statistics. exclude (B, U) bool: SID rows user b
        must not get (`exclusion.history_rows`); each user's search runs on her trie of allowed items."""
        clock, stats = clock or PhaseClock(), SpecStats()
        self._load(prompts, exclude)
        end, first, rounds = self.lay.end, True, 0
        while True:
            if self.drafter is None or first:  # first round: level 0; AR: one level per round, `end` rounds
                lo = rounds
            else:
                lo = int(self.beams.level.min())  # host sync: one per round, decides stop and tree depth
            if lo >= end:
                break
            d = min(self.depth_from(lo), max(end - 1 - lo, 0)) if self.drafter is not None else 0
            widths = self.widths_from(lo, d)
            if self.graphs_on:
                self._replay(first, d, widths)
            else:
                self._round(first, d, clock, widths)
            stats.accepted.append(self.accepted.clone())
            first, rounds = False, rounds + 1
        clock.phase(None)
        stats.times = dict(clock.totals)
        return self._result(), stats

    def depth_from(self, level: int) -> int:
        """Tree depth of a round that starts after `level` SID levels."""
        return self.depths[level] if level < len(self.depths) else self.gamma

    def widths_from(self, level: int, d: int) -> tuple[int, ...] | None:
        """Most nodes per tree level of a round that starts after `level` SID levels (None: N each)."""
        if not self.widths:
            return None
        w = tuple(self.widths[level + j] if level + j < len(self.widths) else self.N for j in range(d))
        return w if any(x < self.N for x in w) else None

    def _result(self) -> BeamResult:
        b = self.beams
        sids = self.trie.leaf_sid[self.trie.walk(b.codes)]
        order = b.scores.argsort(dim=1, descending=True, stable=True)
        sids = torch.where(torch.isfinite(b.scores), sids, torch.full_like(sids, -1))
        return BeamResult(sids=sids.gather(1, order), scores=b.scores.gather(1, order), codes=gather_rows(b.codes, order))


def _compiled_round():
    """spec_round under torch.compile, with room for one graph per (batch, K, N, first, d) a run meets."""
    import torch._dynamo as dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, max(getattr(dynamo.config, name), 256))
    return torch.compile(spec_round, dynamic=False, fullgraph=True)


def _snapshot(e: SpecEngine) -> list[torch.Tensor]:
    return [t.clone() for t in (e.beams.scores, e.beams.states, e.beams.codes, e.beams.path, e.beams.level,
                                e.cache.k, e.cache.v) + tuple(getattr(e.drafter, "state_tensors", lambda: ())())]


def _restore(e: SpecEngine, saved: list[torch.Tensor]) -> None:
    live = (e.beams.scores, e.beams.states, e.beams.codes, e.beams.path, e.beams.level, e.cache.k, e.cache.v) + \
        tuple(getattr(e.drafter, "state_tensors", lambda: ())())
    for dst, src in zip(live, saved):
        dst.copy_(src)
