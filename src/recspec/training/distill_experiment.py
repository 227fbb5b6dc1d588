"""The draft-alignment experiment: one draft per objective, all timed against the same target in one run.

For each objective a draft of the same size and initial weights is trained on the same teacher data
into out_dir/<objective> (`distill`, which resumes and returns at once where a run has finished; a run
stopped by its time limit continues for another time limit). Then, on the same test users and the same
target, the bench harness times AR beam search once per (K, batch) and strict and relaxed speculative
beam search for every draft (`run_bench` with a dict of drafts): rows carry "drafter": objective,
accepted levels per round, target calls per user, speedup over AR, Recall / NDCG@K and mismatches
against AR (strict must be 0).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from recspec.config import OBJECTIVE_NAMES, DistillConfig, ModelConfig
from recspec.data.catalog import Catalog
from recspec.evaluation.bench import BenchConfig, run_bench
from recspec.models.decoder import Decoder
from recspec.models.hf import load_checkpoint
from recspec.training.distill import DistillResult, distill
from recspec.training.teacher import TeacherData


@dataclass(frozen=True)
class ExperimentConfig:
    objectives: tuple[str, ...] = OBJECTIVE_NAMES  # one draft per objective
    size: str = "draft"  # draft model preset (ModelConfig.preset)
    distill: DistillConfig = DistillConfig()  # training of every draft; `objective` is set per draft
    # timing on test users, with an explicit tree: an auto tree holds every child where it fits the budget,
    # which every draft gets accepted alike, and would hide what the objectives change
    bench: BenchConfig = BenchConfig(batches=(1,), modes=("ar", "spec-strict", "spec-relaxed"),
                                     decode=DistillConfig.eval_decode)  # timed on the validation decoding's tree


def train_drafts(target: Decoder, teacher: TeacherData, catalog: Catalog, cfg: ExperimentConfig, out_dir: str,
                 on_log: Callable[[dict], None] | None = None, progress: bool = True) -> dict[str, DistillResult]:
    """One draft per objective into out_dir/<objective> (same size, same initial weights)."""
    device = next(target.parameters()).device
    results = {}
    for objective in cfg.objectives:
        torch.manual_seed(cfg.distill.seed)
        draft = Decoder(ModelConfig.preset(catalog.vocab.size, cfg.size)).to(device)
        log = (lambda r, o=objective: on_log({**r, "objective": o})) if on_log else None
        results[objective] = distill(draft, target, teacher, catalog, replace(cfg.distill, objective=objective),
                                     os.path.join(out_dir, objective), on_log=log, progress=progress)
    return results


def run_experiment(target: Decoder, teacher: TeacherData, catalog: Catalog, cfg: ExperimentConfig, out_dir: str,
                   on_log: Callable[[dict], None] | None = None,
                   progress: bool = True) -> tuple[list[dict], dict[str, DistillResult]]:
    """Train (or reuse) the drafts, then bench AR and every draft in both modes -> (rows, training results)."""
    trained = train_drafts(target, teacher, catalog, cfg, out_dir, on_log, progress)
    device = next(target.parameters()).device
    drafts = {name: load_checkpoint(res.checkpoint, device=device)[0] for name, res in trained.items()}
    rows = run_bench(target, drafts, catalog, list(catalog.data.test), cfg.bench, device=device, on_row=on_log)
    return rows, trained
