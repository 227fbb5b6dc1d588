"""The PAD ablation: which parts of the position-aware module help which drafter, measured on one target.

For each drafter (the independent draft model, trained unrolled; the feature-level head) and each variant
(`VARIANTS`: base, + slot, + step, both without gates, the full module), a fresh drafter is trained against
the frozen target for the same seeded number of steps (`UnrollConfig.steps`), then decodes the same users'
greedy lists of M items with greedy tree speculation. One row per drafter and variant, beside the target's
own greedy lists (mode "greedy", our AR baseline) from the same run:

    {"task": "listwise", "mode": "spec", "drafter": "feature-head+slot", "M": 10, "batch": 1, "users": U,
     "tau": tokens per target call, "target_calls": per list, "median_ms": per call, "speedup_vs_ar": greedy
     ms / this ms (our greedy list decoding, same run), "accept_d0".., "accept_slot_level1" / "_deeper" /
     "_separator", "recall@10", "recall@10_ci", "ndcg@10", "ndcg@10_ci", "mismatches": users whose list
     differs from greedy}

Measurement only reads what the engine returns (`SpecStats`); timing is wall-clock medians per call after a
warm-up, on whatever device the target is on.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from recspec.config import DecodeConfig, TreeConfig, UnrollConfig
from recspec.data.catalog import Catalog
from recspec.data.vocab import Prompts, build_prompts
from recspec.decoding.constraints import ItemList
from recspec.decoding.engine import build_engine
from recspec.decoding.stats import SpecStats
from recspec.evaluation.acceptance import acceptance_profile
from recspec.evaluation.evaluate import target_sids
from recspec.evaluation.listwise import interval_metrics
from recspec.evaluation.timing import sync
from recspec.models.decoder import Decoder
from recspec.training.unrolled import new_drafter, train_unrolled

# variant -> (slot, step, gate)
VARIANTS: dict[str, tuple[bool, bool, bool]] = {"base": (False, False, True), "slot": (True, False, True),
                                                "step": (False, True, True), "both-ungated": (True, True, False),
                                                "pad": (True, True, True)}
OBJECTIVES = {"draft-model": "draft-unrolled", "feature-head": "feature-head"}  # drafter -> training objective


@dataclass(frozen=True)
class AblationConfig:
    drafters: tuple[str, ...] = tuple(OBJECTIVES)  # "draft-model", "feature-head"
    variants: tuple[str, ...] = tuple(VARIANTS)
    M: int = 10  # items per list
    users: int = 200  # first test users decoded
    batch: int = 1  # users per decoding call
    train: UnrollConfig = UnrollConfig(steps=300)  # every variant's training (objective and PAD set per row)
    draft_size: str = "draft"  # preset of the independent draft model
    tree: TreeConfig = TreeConfig(draft_beams=8, gamma=4)  # the tree every drafter proposes
    warmup: int = 2  # calls before timing

    def __post_init__(self) -> None:
        bad = [d for d in self.drafters if d not in OBJECTIVES] + [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"unknown drafter or variant {bad[0]!r}; drafters: {', '.join(OBJECTIVES)}; "
                             f"variants: {', '.join(VARIANTS)}")
        if self.M < 1 or self.users < 1 or self.batch < 1:
            raise ValueError("M, users and batch must be >= 1")


def variant_name(drafter: str, variant: str) -> str:
    """("feature-head", "base") -> "feature-head"; ("draft-model", "pad") -> "draft-model+pad"."""
    return drafter if variant == "base" else f"{drafter}+{variant}"


def variant_config(cfg: AblationConfig, drafter: str, variant: str) -> UnrollConfig:
    slot, step, gate = VARIANTS[variant]
    return dataclasses.replace(cfg.train, objective=OBJECTIVES[drafter], pad_slot=slot, pad_step=step, pad_gate=gate)


@dataclass
class Decoded:
    lists: list[list[int]]  # (U, M) item ids in generated order
    ms: list[float]  # wall ms per call
    stats: list[SpecStats]  # per call


def decode_lists(target: Decoder, c: ItemList, draft, prompts: list[Prompts], cfg: DecodeConfig, warmup: int) -> Decoded:
    """Every batch through one engine (warm-up calls first, not kept)."""
    engine = build_engine(target, c, cfg, draft)
    for p in prompts[:warmup]:
        engine.run(p)
    out = Decoded([], [], [])
    for p in prompts:
        sync(p.tokens.device)
        t0 = time.perf_counter()
        res, stats = engine.run(p)
        lists = res.sids[:, 0].tolist()  # host sync: the lists reach the caller
        out.ms.append((time.perf_counter() - t0) * 1e3)
        out.lists += lists
        out.stats.append(stats)
    return out


def run_ablation(target: Decoder, cat: Catalog, cfg: AblationConfig, out_dir: str,
                 on_row: Callable[[dict], None] = lambda r: None) -> list[dict]:
    """Train and measure every (drafter, variant) of cfg against the target's greedy lists -> rows (module
    docstring); drafters are kept under out_dir/<name> (a finished run is resumed, not retrained)."""
    dev = next(target.parameters()).device
    tests = cat.data.test[: cfg.users]
    truth = target_sids(cat.trie, tests)  # lists hold SID rows
    hist = [e.history for e in tests]
    prompts = [build_prompts(cat.vocab, cat.index, hist[i:i + cfg.batch]).to(dev) for i in range(0, len(hist), cfg.batch)]
    c = ItemList(cat.trie, cfg.M)
    base = DecodeConfig(K=1, batch_size=cfg.batch)
    greedy = decode_lists(target, c, None, prompts, base, cfg.warmup)
    greedy_ms = statistics.median(greedy.ms)
    common = {"task": "listwise", "M": cfg.M, "batch": cfg.batch, "users": len(tests), "device": dev.type}
    rows = [{**common, "mode": "greedy", "median_ms": round(greedy_ms, 3), "target_calls": float(c.num_levels), "tau": 1.0,
             **interval_metrics(greedy.lists, truth, cfg.M)}]
    on_row(rows[-1])
    for drafter in cfg.drafters:
        for variant in cfg.variants:
            name, ucfg = variant_name(drafter, variant), variant_config(cfg, drafter, variant)
            model = new_drafter(target, cat.vocab, ucfg, cfg.draft_size)
            res = train_unrolled(model, target, cat.data, cat.index, cat.vocab, ucfg, os.path.join(out_dir, name),
                                 progress=False)
            got = decode_lists(target, c, model, prompts, base.replace(tree=cfg.tree), cfg.warmup)
            rows.append({**common, "mode": "spec", "drafter": name, "train_steps": res.steps,
                         **spec_columns(got, greedy, c, cfg), **interval_metrics(got.lists, truth, cfg.M)})
            rows[-1]["speedup_vs_ar"] = round(greedy_ms / rows[-1]["median_ms"], 3)
            on_row(rows[-1])
    return rows


def spec_columns(got: Decoded, greedy: Decoded, c: ItemList, cfg: AblationConfig) -> dict:
    """tau, target calls, median ms, per-depth / per-slot acceptance and mismatching users of one drafter."""
    calls = torch.cat([s.target_calls() for s in got.stats]).float()
    L = c.trie.num_levels
    table = _accepted_table(got.stats)
    prof = acceptance_profile(table, cfg.tree.gamma, c.num_levels, L)
    bad = sum(a != b for a, b in zip(got.lists, greedy.lists))
    return {"median_ms": round(statistics.median(got.ms), 3), "target_calls": round(float(calls.mean()), 3),
            "tau": round(c.num_levels / float(calls.mean()), 3), **prof.columns(), "mismatches": bad}


def _accepted_table(stats: list[SpecStats]) -> torch.Tensor:
    """Per-call accepted levels (B, R) -> one (U, R_max) table, -1 padded."""
    merged = stats[0]
    for s in stats[1:]:
        merged = merged.merge(s)
    return torch.stack(merged.accepted, 1) if merged.accepted else torch.zeros(0, 0, dtype=torch.long)
