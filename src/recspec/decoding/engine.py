"""The decoding engine: static buffers around `round.spec_round`, run eagerly or as CUDA graphs.

Every tensor the loop touches lives in a buffer allocated once for a (batch, prompt length) shape,
so each round shape (first round or not, draft depth d, widths) can be captured once as a CUDA graph
and replayed. The only host synchronisation is one read of the users' levels per speculative round,
which decides whether to stop and how deep the next tree is (marked below); AR needs none. With no
drafter the same loop is autoregressive beam search: L rounds (L + 1 with eos).

`build_engine` is the one factory: the CLI, the Python API, benchmarks and scripts all build engines
from a `DecodeConfig`.
"""

from __future__ import annotations

import torch

from recspec.config import DecodeConfig
from recspec.data.datasets import HISTORY_LEN
from recspec.data.trie import SIDTrie
from recspec.data.vocab import PAD, Prompts
from recspec.decoding.beam_search import BeamResult
from recspec.decoding.constraints import Constraint, as_constraint
from recspec.decoding.drafters import Drafter, make_drafter
from recspec.decoding.handoff import Frontier
from recspec.decoding.prompt import prompt_key_mask
from recspec.decoding.round import RoundPlan, RoundState, frontier, initial_beams, spec_round
from recspec.decoding.stats import SpecStats
from recspec.decoding.tree import Layout, gather_rows
from recspec.decoding.tree_shape import TreeShape, no_tree, tree_shape
from recspec.decoding.verify import make_rule
from recspec.models.decoder import Decoder
from recspec.models.heads import FeatureHead


def build_engine(target: Decoder, constraint: Constraint | SIDTrie, cfg: DecodeConfig,
                 draft: Decoder | FeatureHead | str | None = None, prior: torch.Tensor | None = None) -> "SpecEngine":
    """The engine `cfg` describes, on the target's device. constraint: what is decoded (a SID trie: top-K
    items; `constraints.ItemList`: a list; `constraints.FreeText`: text). draft: a draft `Decoder`, a feature
    head (`models.heads.FeatureHead`, greedy K = 1), an `NGramTable`, a drafter's registry name ("trie"), or
    None (no tree: plain beam search, greedy at K = 1).
    prior: (S,) the trie drafter's ranking of children (`Catalog.popularity`). The tree is cfg.tree's
    (auto: from the SID trie, K and the device's budget); relaxed sampling draws from a generator seeded
    with cfg.seed, or from torch's global RNG under graphs / compile (seed it with torch.manual_seed)."""
    device = next(target.parameters()).device
    constraint = as_constraint(constraint).to(device)
    shape = tree_shape(cfg, constraint, device) if draft is not None else no_tree(cfg.K)
    drafter = make_drafter(draft, constraint, shape, prior, target) if draft is not None else None
    static = cfg.engine.cuda_graphs or cfg.engine.compile  # captured or compiled rounds: the global RNG
    gen = torch.Generator(device=device).manual_seed(cfg.seed) if not static else None
    return SpecEngine(target, drafter, constraint, cfg, shape, gen)


def longest_prompt(L: int) -> int:
    """Tokens of the longest prompt (`vocab.build_prompts`): <bos> and HISTORY_LEN items of L codes + <eos>."""
    return 1 + HISTORY_LEN * (L + 1)


class SpecEngine:
    def __init__(self, target: Decoder, drafter: Drafter | None, constraint: Constraint | SIDTrie, cfg: DecodeConfig,
                 shape: TreeShape | None = None, generator: torch.Generator | None = None):
        """cfg: K, verify, temperature, eos and the engine options (cfg.engine); batch_size and
        exclude_history are the caller's (`run` takes the users and their exclusions).
        shape: the draft tree (`tree_shape.tree_shape(cfg, ...)` where None; no tree without a drafter):
        depths[l] is the depth of rounds whose slowest user has produced l levels (gamma past its end),
        widths[l - 1] the most nodes drafted at SID level l (N past its end). The target is fed only
        these widths, also under graphs.
        generator: relaxed sampling's RNG (None: torch's global one; required under compile)."""
        K, opts = cfg.K, cfg.engine
        constraint = as_constraint(constraint)
        shape = (tree_shape(cfg, constraint, next(target.parameters()).device) if shape is None else shape) \
            if drafter is not None else no_tree(K)
        if not 1 <= K <= constraint.max_beams():
            raise ValueError(f"K={K} must be between 1 and the number of distinct {constraint.unit} ({constraint.max_beams()})")
        if shape.N < K:
            raise ValueError(f"need draft beams N >= K (got N={shape.N}, K={K})")
        if target.cfg.vocab_size != constraint.vocab_size:
            raise ValueError(f"target vocabulary ({target.cfg.vocab_size}) differs from the constraint's ({constraint.vocab_size})")
        if opts.compile and generator is not None:
            raise ValueError("compile=True samples from torch's global RNG (seed it with torch.manual_seed); pass generator=None")
        if any(w < 1 or w > shape.N for w in shape.widths):
            raise ValueError(f"tree widths must be in 1..N = {shape.N} (a tree level holds at most N nodes), got {shape.widths}")
        if shape.gamma < 0 or any(d < 0 for d in shape.depths):
            raise ValueError(f"draft depths must be >= 0, got gamma {shape.gamma}, depths {shape.depths}")
        self.target, self.drafter, self.constraint, self.cfg, self.shape = target, drafter, constraint, cfg, shape
        self.trie = getattr(constraint, "trie", None)  # the SID trie where there is one (exclusions are SID rows)
        if cfg.eos and (self.trie is None or constraint.num_levels != self.trie.num_levels):
            raise ValueError("eos scores <eos> after one item's codes; a list ends each item with <eos> itself, "
                             "and text stops at it: decode lists and text with eos=False")
        self.K, self.N, self.eos = K, shape.N, cfg.eos
        self.rule = make_rule(cfg, generator)
        self.gamma_max = max((shape.gamma, *shape.depths))  # tree slots the layout reserves
        self.graphs_on = opts.cuda_graphs
        self.prompt_width = opts.prompt_width if opts.prompt_width is not None or not (opts.cuda_graphs or opts.compile) \
            else longest_prompt(self.trie.num_levels if self.trie is not None else 0)  # one buffer shape, one set of graphs
        self.static = opts.static  # fixed shapes per round plan: no host sync in a round
        self._round_fn = _compiled_round() if opts.compile else spec_round
        self._shape: tuple[int, int] | None = None
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._pool = None  # the memory pool this shape's graphs share

    # --- buffers ------------------------------------------------------------------------------
    def _allocate(self, B: int, T: int, device) -> None:
        L = self.constraint.num_levels
        self.lay = Layout(T=T, L=L, K=self.K, N=self.N, gamma=self.gamma_max, eos=self.eos)
        self.prompts = Prompts(torch.full((B, T), PAD, dtype=torch.long, device=device),
                               torch.ones(B, dtype=torch.long, device=device))
        self.keys = torch.zeros(B, self.lay.slots, dtype=torch.bool, device=device)
        self.cache = self.target.new_cache(B, self.lay.slots)
        self.beams = initial_beams(B, self.K, L, self.lay, self.constraint.ROOT, device)
        self.accepted = torch.zeros(B, dtype=torch.long, device=device)
        self.banned: torch.Tensor | None = None  # (B, S) bool, allocated by the first run with exclusions
        self._shape, self._graphs = (B, T), {}
        self._pool = None  # the old graphs' memory pool goes with them; a shared handle to it would dangle

    def load(self, prompts: Prompts, exclude: torch.Tensor | None = None) -> None:
        """Copy a batch of prompts (and exclusions) into the static buffers, allocating them for a new
        (batch, prompt width) shape. `run` starts with this; a profiler may call it, then `round`."""
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
        """exclude (B, U) bool SID rows -> the static (B, S) buffers of states each user may not enter: the
        first round's; a constraint may add bans as it decodes (a list's finished items), and every run
        starts from here again."""
        B, dev = self.prompts.tokens.shape[0], self.prompts.tokens.device
        if exclude is not None and (self.trie is None or exclude.shape != (B, self.trie.num_sids)):
            raise ValueError(f"exclude has shape {tuple(exclude.shape)}, expected (users, SIDs) = "
                             f"{(B, self.trie.num_sids if self.trie is not None else 0)}")
        banned = self.constraint.initial_bans(exclude, B, dev)
        self.masked = banned is not None
        if not self.masked:
            return
        if self.banned is None:
            self.banned = torch.zeros_like(banned)
        self.banned.copy_(banned)

    def state(self) -> RoundState:
        """The round's inputs: models, rule, trie and the static buffers of the loaded batch."""
        return RoundState(self.target, self.drafter, self.rule, self.constraint, self.lay, self.cache, self.prompts,
                          self.keys, self.banned if self.masked else None)

    def frontier(self, first: bool = False) -> Frontier:
        """The loaded batch's current beams as the next round's drafter sees them (first: before any round)."""
        return frontier(self.beams, self.lay, not first, self.banned if self.masked else None)

    def reset(self) -> None:
        """Before the first round: the loaded prompts' key mask, and K empty beams per user."""
        B, dev = self.prompts.tokens.shape[0], self.prompts.tokens.device
        self.keys.copy_(prompt_key_mask(self.prompts, self.lay.slots))
        self.beams.copy_(initial_beams(B, self.K, self.lay.L, self.lay, self.constraint.ROOT, dev))

    # --- one round ----------------------------------------------------------------------------
    def round(self, plan: RoundPlan) -> None:
        """Run one round on the loaded batch, eagerly (or with fixed shapes), and update the beams in place."""
        if plan.first:  # inside the round, so a graph of the first round captures the set-up too
            self.reset()
        active = self.beams.level < self.lay.end
        beams, verdict = self._round_fn(self.state(), self.beams, plan, not self.static)
        self.beams.copy_(beams)
        self.accepted.copy_(torch.where(active, verdict.accepted, torch.full_like(verdict.accepted, -1)))

    def graph(self, plan: RoundPlan) -> torch.cuda.CUDAGraph:
        """The round captured as a CUDA graph (captured on first use, once per plan and exclusion mode)."""
        key = (plan, self.masked)
        if key not in self._graphs:
            self._graphs[key] = self._capture(plan)
        return self._graphs[key]

    def _capture(self, plan: RoundPlan) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream (cuBLAS workspaces etc.), then capture the round."""
        saved = self._snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.round(plan)
        torch.cuda.current_stream().wait_stream(side)
        self._restore(saved)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self.round(plan)
        self._pool = graph.pool()
        self._restore(saved)  # capture does not run the kernels, but keep state explicit
        return graph

    def _live(self) -> tuple[torch.Tensor, ...]:
        """Tensors a round mutates."""
        return self.beams.tensors() + (self.cache.k, self.cache.v) + (self.drafter.state_tensors() if self.drafter else ()) \
            + ((self.banned,) if self.masked else ())

    def _snapshot(self) -> list[torch.Tensor]:
        return [t.clone() for t in self._live()]

    def _restore(self, saved: list[torch.Tensor]) -> None:
        for dst, src in zip(self._live(), saved):
            dst.copy_(src)

    # --- the loop -----------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, prompts: Prompts, exclude: torch.Tensor | None = None) -> tuple[BeamResult, SpecStats]:
        """prompts (B users) -> top-K items per user and statistics. exclude (B, U) bool: SID rows user b
        must not get (`exclusion.history_rows`); each user's search runs on her trie of allowed items."""
        stats = SpecStats()
        self.load(prompts, exclude)
        end, first, rounds = self.lay.end, True, 0
        early = self.K == 1 and self.constraint.finished(self.beams.states) is not None  # text may end early
        while True:
            if (self.drafter is None and not early) or first:  # first round: level 0; AR: one level per round
                lo = rounds
            else:
                lo = int(self.beams.level.min())  # host sync: one per round, decides stop and tree depth
            if lo >= end:
                break
            plan = self.plan(lo, first)
            if self.graphs_on:
                self.graph(plan).replay()
            else:
                self.round(plan)
            stats.record_round(self.accepted)
            first, rounds = False, rounds + 1
        return self.result(), stats

    def plan(self, level: int, first: bool) -> RoundPlan:
        """The round that starts after `level` SID levels: its tree depth (never past the last level the
        target must produce itself) and widths (None: N each)."""
        if self.drafter is None:
            return RoundPlan(first, 0, None)
        depths, gamma = self.shape.depths, self.shape.gamma
        d = min(depths[level] if level < len(depths) else gamma, max(self.lay.end - 1 - level, 0))
        return RoundPlan(first, d, self.widths_from(level, d))

    def widths_from(self, level: int, d: int) -> tuple[int, ...] | None:
        """Most nodes per tree level of a round that starts after `level` SID levels (None: N each)."""
        widths = self.shape.widths
        if not widths:
            return None
        w = tuple(widths[level + j] if level + j < len(widths) else self.N for j in range(d))
        return w if any(x < self.N for x in w) else None

    def result(self) -> BeamResult:
        """The loaded batch's K beams, best first (sids -1 where a beam is dead)."""
        b = self.beams
        out = self.constraint.outputs(b.codes)  # (B, K, ...) SID rows, item lists or tokens
        order = b.scores.argsort(dim=1, descending=True, stable=True)
        live = torch.isfinite(b.scores).reshape(*b.scores.shape, *([1] * (out.dim() - 2)))
        out = torch.where(live, out, torch.full_like(out, -1))
        return BeamResult(sids=gather_rows(out, order), scores=b.scores.gather(1, order), codes=gather_rows(b.codes, order))


def _compiled_round():
    """spec_round under torch.compile, with room for one graph per (batch, K, N, plan) a run meets."""
    import torch._dynamo as dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, max(getattr(dynamo.config, name), 256))
    return torch.compile(spec_round, dynamic=False, fullgraph=True)


@torch.no_grad()
def spec_beam_search(target: Decoder, drafter: Drafter | None, constraint: Constraint | SIDTrie, prompts: Prompts,
                     cfg: DecodeConfig, shape: TreeShape | None = None, generator: torch.Generator | None = None,
                     exclude: torch.Tensor | None = None) -> tuple[BeamResult, SpecStats]:
    """prompts (B users) -> top-K items per user and acceptance statistics (eager, any device): one
    engine for one call. No drafter: plain autoregressive beam search through the same loop."""
    return SpecEngine(target, drafter, constraint, cfg, shape, generator).run(prompts, exclude=exclude)
