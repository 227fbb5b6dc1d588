"""One-run speed comparisons: same models, same users, every mode, medians after warm-up -> JSON rows.

Modes: "ar" (our autoregressive beam search through the engine), "spec-strict", "spec-relaxed",
"hf" (transformers' `generate` constrained beam search on our exported weights, when installed).
Each row carries the recommendation quality of the same run (Recall/NDCG@K), acceptance
statistics and `mismatches`: users whose list differs from AR's (strict must be 0), and says whether
`<eos>` was scored as an (L+1)-th step ("eos") and whether history items were excluded.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from recspec.config import DecodeConfig, TreeConfig
from recspec.data.catalog import Catalog
from recspec.data.datasets import Example
from recspec.data.exclusion import history_rows
from recspec.data.vocab import build_prompts
from recspec.decoding.engine import SpecEngine, build_engine
from recspec.decoding.stats import SpecStats
from recspec.decoding.tree_shape import TreeShape
from recspec.evaluation.evaluate import target_sids
from recspec.evaluation.metrics import ranking_metrics
from recspec.models.decoder import Decoder


MODES = ("ar", "spec-strict", "spec-relaxed", "hf")  # BenchConfig.modes


@dataclass(frozen=True)
class BenchConfig:
    """A speed comparison: which (K, batch, mode) cells are timed, on how many users. How each engine decodes
    is `decode` (its K, batch_size and verify are set per cell)."""

    Ks: tuple[int, ...] = (1, 5, 10, 20)  # beams
    batches: tuple[int, ...] = (1, 32)  # users per call
    users: int = 200  # users timed per (mode, K, batch)
    warmup: int = 3  # calls before timing starts
    modes: tuple[str, ...] = MODES  # "ar": no drafter; "spec-strict" / "spec-relaxed": the verify rule; "hf"
    hf_users: int = 0  # users for "hf" (0: same as users); HF is slow
    hf_max_batch: int = 0  # largest batch HF is timed at (0: all)
    tie_tol: float = 1e-4  # a list differing from AR's where the two scores at the first differing rank
    #                        are this close is counted as a tie (floating-point noise), not an error
    relaxed_beams: int = 0  # N for "spec-relaxed" (0: the tree's); its verification loops over the N draws
    decode: DecodeConfig = DecodeConfig()  # the tree, engine options, temperature, seed, eos, exclude_history

    def cell(self, mode: str, K: int, batch: int) -> DecodeConfig:
        """The decoding config of one timed cell."""
        cfg = self.decode.replace(K=K, batch_size=batch, verify="relaxed" if mode == "spec-relaxed" else "strict")
        return cfg.replace(draft_beams=self.relaxed_beams) if mode == "spec-relaxed" and self.relaxed_beams else cfg


@dataclass
class ModeRun:
    """What one mode produced on the benchmark users."""

    sids: list[list[int]] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)  # per call
    stats: SpecStats = field(default_factory=SpecStats)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()  # host sync: timing boundary


def time_calls(call: Callable[[list[int]], tuple[list[list[int]], SpecStats | None]], batches: list[list[int]],
               warmup: int, device) -> ModeRun:
    """Run `call` on every batch (warm-up calls first, on the first batches, untimed)."""
    out = ModeRun()
    for users in batches[:warmup]:
        call(users)
    for users in batches:
        _sync(device)
        t0 = time.perf_counter()
        sids, scores, st = call(users)
        _sync(device)
        out.times_s.append(time.perf_counter() - t0)
        out.sids += sids
        out.scores += scores
        if st is not None:
            out.stats = out.stats.merge(st)
    return out


def engine_call(engine: SpecEngine, catalog: Catalog, examples: Sequence[Example], device,
                exclude_history: bool = False):
    def call(users: list[int]):
        histories = [examples[i].history for i in users]
        prompts = build_prompts(catalog.vocab, catalog.index, histories).to(device)
        res, st = engine.run(prompts, exclude=history_rows(engine.trie, histories) if exclude_history else None)
        return res.sids.tolist(), res.scores.tolist(), st
    return call


def make_engine(mode: str, target: Decoder, draft: Decoder | str | None, catalog: Catalog, K: int, cfg: BenchConfig,
                batch: int = 1) -> SpecEngine:
    """The engine of one (mode, K, batch) cell: `build_engine` on cfg.cell's config; "ar" has no drafter."""
    return build_engine(target, catalog.trie, cfg.cell(mode, K, batch), draft if mode != "ar" else None,
                        catalog.popularity)


def decode_columns(cfg: DecodeConfig, shape: TreeShape | None = None) -> dict:
    """A decoding config (and the tree it resolved to, speculative modes) as results-row fields."""
    row = {"K": cfg.K, "batch": cfg.batch_size, "eos": cfg.eos, "exclude_history": cfg.exclude_history}
    if shape is not None:
        row.update(draft_beams=shape.N, gamma=shape.gamma, depths="/".join(map(str, shape.depths)),
                   widths="/".join(map(str, shape.widths)), expand=shape.expand)
    return row


def count_mismatches(ar: ModeRun, run: ModeRun, tol: float) -> tuple[int, int]:
    """(users whose list differs from AR's, of which ties: at the first differing rank the two
    lists' scores are within tol, i.e. two near-equal candidates ordered differently by rounding)."""
    diff = ties = 0
    for i, (a, b) in enumerate(zip(ar.sids, run.sids)):
        if a == b:
            continue
        diff += 1
        j = next(k for k, (x, y) in enumerate(zip(a, b)) if x != y)
        if run.scores and abs(ar.scores[i][j] - run.scores[i][j]) <= tol:
            ties += 1
    return diff, ties


def audit_ties(reference: Decoder, catalog: Catalog, examples: Sequence[Example], ar: ModeRun, run: ModeRun,
               device, eos: bool = False, factor: float = 2.0) -> tuple[int, float, float]:
    """Re-score, under `reference` (the fp32 target), both lists of every user whose list differs from AR's
    (scoring <eos> too with eos=True, as the runs did).

    Returns (ties, largest fp32 gap at a first differing rank, largest |run score - fp32 score|).
    A user is a tie when the fp32 scores of the two items at the first differing rank differ by no
    more than `factor` times (2: each item's score may be off either way) the largest rounding error
    measured on that user's two lists: the two orders are then equally right up to the precision the
    lists were decoded in."""
    from recspec.decoding.rescore import sid_scores

    trie = catalog.trie.to(device)
    ties, max_gap, max_noise = 0, 0.0, 0.0
    for i, (a, b) in enumerate(zip(ar.sids, run.sids)):
        if a == b:
            continue
        prompts = build_prompts(catalog.vocab, catalog.index, [examples[i].history]).to(device)
        s32 = sid_scores(reference, trie, prompts, torch.tensor([a, b], device=device).reshape(1, -1), eos)[0].cpu()
        k = len(a)
        got = torch.tensor(ar.scores[i] + run.scores[i])
        ok = torch.isfinite(s32) & torch.isfinite(got)
        noise = float((s32 - got)[ok].abs().max()) if ok.any() else 0.0
        j = next(t for t, (x, y) in enumerate(zip(a, b)) if x != y)
        gap = abs(float(s32[j] - s32[k + j]))
        ties += int(gap <= factor * noise)
        max_gap, max_noise = max(max_gap, gap), max(max_noise, noise)
    return ties, max_gap, max_noise


def row_for(mode: str, cfg: DecodeConfig, run: ModeRun, gt: list[set[int]], ar: ModeRun | None,
            tie_tol: float = 1e-4, drafter: str | None = None, shape: TreeShape | None = None) -> dict:
    """One results row: the cell's config (`decode_columns`), its timing, quality and acceptance, and its
    mismatches against AR's lists."""
    med = statistics.median(run.times_s)
    cols = decode_columns(cfg, shape)
    row = {"task": "topk", **({"drafter": drafter} if drafter is not None else {}), "mode": mode,
           "K": cols.pop("K"), "batch": cols.pop("batch"), **cols, "median_ms": round(med * 1e3, 3),
           "users_per_s": round(cfg.batch_size / med, 2), "users": len(run.sids)}
    row.update({k: round(v, 5) for k, v in ranking_metrics(run.sids, gt[: len(run.sids)], [cfg.K]).items()})
    if run.stats.accepted:
        s = run.stats.summary()
        row.update(accepted_levels=round(s["accepted_levels"], 4), target_calls=round(s["target_calls"], 4))
        row.update({f"accept_hist_{i}": c for i, c in enumerate(s["accept_hist"])})
    if ar is not None:
        row["mismatches"], ties = count_mismatches(ar, run, tie_tol)
        if run.scores:
            row["mismatches_ties"] = ties
    return row


def run_bench(target: Decoder, draft: Decoder | str | dict[str, Decoder | str] | None, catalog: Catalog,
              examples: Sequence[Example], cfg: BenchConfig, device="cpu", hf_model=None,
              on_row: Callable[[dict], None] | None = None, reference: Decoder | None = None) -> list[dict]:
    """Every (K, batch, mode) on the same users; speedups are filled in against "ar" and "hf".

    reference: the fp32 target, when the timed one runs in lower precision: every user whose list
    differs from AR's is re-scored under it (`audit_ties`), and the rows say how many are ties.

    draft: one draft model (or "trie", the model-free trie drafter), or {name: draft}: then every spec
    mode is timed once per draft, on the same users and against the same AR run, and its rows carry
    "drafter": name."""
    gt = target_sids(catalog.trie, examples)
    drafts = draft if isinstance(draft, dict) else ({} if draft is None else {None: draft})
    rows = []
    for K in cfg.Ks:
        for batch in cfg.batches:
            n = cfg.users - cfg.users % batch or batch
            batches = [list(range(s, s + batch)) for s in range(0, min(n, len(examples)), batch)]
            runs: dict[tuple[str, str | None], ModeRun] = {}  # (mode, drafter name) -> run
            shapes: dict[tuple[str, str | None], TreeShape] = {}  # the tree each speculative run had
            for mode in cfg.modes:
                if mode == "hf":
                    if hf_model is None or (cfg.hf_max_batch and batch > cfg.hf_max_batch):
                        continue
                    from recspec.evaluation.hf_baseline import hf_call

                    hb = batches[: max(1, (cfg.hf_users or n) // batch)]
                    call = hf_call(hf_model, catalog, examples, K, device, cfg.decode.eos, cfg.decode.exclude_history)
                    runs[mode, None] = time_calls(call, hb, min(cfg.warmup, 1), device)
                    continue
                for name, d in (drafts.items() if mode != "ar" else [(None, None)]):
                    engine = make_engine(mode, target, d, catalog, K, cfg, batch)
                    call = engine_call(engine, catalog, examples, device, cfg.decode.exclude_history)
                    runs[mode, name] = time_calls(call, batches, cfg.warmup, device)
                    shapes[mode, name] = engine.shape if mode != "ar" else None
            ar = runs.get(("ar", None))
            new = [row_for(m, cfg.cell(m, K, batch), r, gt, ar if m != "ar" else None, cfg.tie_tol, name,
                           shapes.get((m, name))) for (m, name), r in runs.items()]
            _speedups(new)
            if reference is not None and ar is not None:
                for r, run in zip(new, runs.values()):
                    if r.get("mismatches") and run.scores:  # (hf runs keep no scores)
                        ties, gap, noise = audit_ties(reference, catalog, examples, ar, run, device, cfg.decode.eos)
                        r.update(mismatches_ties_fp32=ties, fp32_gap_max=round(gap, 5), score_noise_max=round(noise, 5))
            for r in new:
                rows.append(r)
                if on_row:
                    on_row(r)
    return rows


def _speedups(rows: list[dict]) -> None:
    by = {r["mode"]: r["median_ms"] for r in rows}
    for r in rows:
        if "ar" in by and r["mode"] != "ar":
            r["speedup_vs_ar"] = round(by["ar"] / r["median_ms"], 3)
        if "hf" in by and r["mode"] != "hf":
            r["speedup_vs_hf"] = round(by["hf"] / r["median_ms"], 3)


@dataclass(frozen=True)
class BenchBlock:
    """One timed block of a benchmark plan: a `run_bench` call on one batch size and set of Ks. A plan is a
    list of blocks, most wanted first; scripts pick blocks by label."""

    label: str  # names the block in rows and logs
    batch: int  # users per call
    Ks: tuple[int, ...]  # beams
    users: int  # users timed per (mode, K)
    modes: tuple[str, ...] = MODES  # "ar", "spec-strict", "spec-relaxed", "hf"
    drafts: dict = field(default_factory=dict, hash=False)  # drafter name -> draft model or "trie" (run_bench's draft)
    hf_users: int = 0  # users for transformers' generate (0: as many as the other modes)
    compile: bool = False  # rounds through torch.compile (captured as graphs where the base config says so)
    eos: bool = False  # every mode also scores <eos> after the L codes (an (L+1)-th call, as transformers' generate)
    tree: TreeConfig = TreeConfig()  # the draft tree (all None: the auto shape)
    relaxed_beams: int = 0  # N for "spec-relaxed" (0: the tree's)

    def bench_config(self, base: DecodeConfig, **fields) -> BenchConfig:
        """The block's BenchConfig: `base` with this block's tree, compile and eos; other BenchConfig fields
        (warmup, tie_tol, ...) by name."""
        decode = dataclasses.replace(base.replace(compile=self.compile, eos=self.eos), tree=self.tree)
        return BenchConfig(Ks=self.Ks, batches=(self.batch,), users=self.users, modes=self.modes,
                           hf_users=self.hf_users, relaxed_beams=self.relaxed_beams, decode=decode, **fields)
