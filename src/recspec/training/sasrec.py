"""Training, ranking and tuning of the SASRec baseline (`recspec.models.sasrec`).

Training rows: each training sequence's newest max_len + 1 items (sequences of one item teach nothing
and are dropped), left-padded. Inputs are a row's first max_len tokens, labels its last max_len: at
every position whose input is an item, the label is the item after it. The loss is full-softmax cross
entropy over all I items (no negative sampling), averaged over those positions.

Schedule: AdamW, linear warm-up then cosine decay to 0 at cfg.steps (`training.loop.lr_at`). Every
cfg.eval_every steps (and at the last) the model ranks the validation users' next items; Recall@10 /
NDCG@10 there form the curve, the best Recall@10 keeps a copy of the weights in memory, and
cfg.patience evaluations without a new best stop the run. The returned model has the best weights.

Determinism: batches come from a torch.Generator seeded with cfg.seed; initialisation and dropout use
the global RNG, seeded with cfg.seed inside `torch.random.fork_rng` (the caller's RNG state is left as
it was). Nothing depends on the clock.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from recspec.data.datasets import Example
from recspec.evaluation.metrics import ranking_metrics
from recspec.models.sasrec import PAD, SASRec, SASRecConfig, to_tokens
from recspec.training.loop import lr_at, make_optimizer

IGNORE = -100  # label of a position that is not trained (its input is padding)
EVAL_K = 10  # the validation curve's cut-off (Recall@10 picks the best step)


@dataclass(frozen=True)
class SASRecTrainConfig:
    steps: int = 2000  # optimiser steps; the cosine schedule ends here
    batch_size: int = 128  # training rows (sequences) per step
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0  # AdamW decay on matrices and embeddings (none on LayerNorm / biases)
    warmup_steps: int = 100  # linear warm-up steps before the cosine decay
    seed: int = 0  # initialisation, dropout, batch order and the eval_users sample
    eval_every: int = 200  # steps between validations (and one after the last step)
    eval_users: int = 0  # validation users scored each time, a seeded sample; 0: all
    patience: int = 5  # validations without a new best Recall@10 before stopping
    eval_batch: int = 256  # users per forward pass when ranking


@dataclass(frozen=True)
class SASRecResult:
    model: SASRec  # in eval mode, with the weights of best_step
    curve: list[dict]  # one {"step", "recall@10", "ndcg@10"} per validation, in step order
    best_step: int  # steps done when the kept weights were taken (cfg.steps without validation)
    steps_run: int  # steps actually done (fewer than cfg.steps after early stopping)


@dataclass(frozen=True)
class SASRecGrid:
    """The hyperparameters `tune_sasrec` tries: every combination."""

    hidden: tuple[int, ...] = (64, 128)  # SASRecConfig.hidden
    dropout: tuple[float, ...] = (0.2, 0.5)  # SASRecConfig.dropout
    lr: tuple[float, ...] = (1e-3, 3e-3)  # SASRecTrainConfig.lr


@dataclass(frozen=True)
class SASRecTrial:
    model_cfg: SASRecConfig
    train_cfg: SASRecTrainConfig
    curve: list[dict]  # its validation curve (SASRecResult.curve)
    best_step: int
    steps_run: int  # steps done (fewer than train_cfg.steps after early stopping)
    best_recall: float  # validation Recall@10 at best_step


@dataclass(frozen=True)
class SASRecTuning:
    trials: list[SASRecTrial]  # in grid order (hidden, then dropout, then lr)
    best: SASRecTrial  # the trial with the highest validation Recall@10 (first among equals)
    model: SASRec  # the best trial's model at its best step


def training_rows(sequences: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """-> (N, T + 1) tokens, T <= max_len: every sequence of >= 2 items, its newest max_len + 1, left-padded."""
    kept = [s for s in sequences if len(s) >= 2]
    if not kept:
        raise ValueError("no training sequence has two items")
    return to_tokens(kept, max_len + 1)


def batch_order(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless (b,) row indices: epochs of seeded permutations cut into batches (the last may be short)."""
    while True:
        perm = torch.randperm(n, generator=gen)
        yield from perm.split(batch_size)


def sasrec_loss(model: SASRec, rows: torch.Tensor) -> torch.Tensor:
    """rows (B, T + 1) tokens -> mean cross entropy over all items of the next item at every position
    whose input is an item. Leading all-padding columns are cut first (outputs do not change)."""
    first = int((rows != PAD).any(dim=0).nonzero()[0])  # host sync: trim the batch's common padding
    inputs, nxt = rows[:, first:-1], rows[:, first + 1:]  # (B, T'), (B, T')
    labels = torch.where(inputs != PAD, nxt - 1, IGNORE)  # (B, T') item ids
    take = labels != IGNORE
    hidden = model(inputs)[take]  # (P, C) trained positions only
    return F.cross_entropy(model.logits(hidden), labels[take])


@torch.no_grad()
def rank_sasrec(model: SASRec, histories: Sequence[Sequence[int]], k: int, batch_size: int = 256,
                device: str | torch.device = "cpu") -> list[list[int]]:
    """Top-k item ids per history by SASRec score, best first (history items may be recommended)."""
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    try:
        for s in range(0, len(histories), batch_size):
            tokens = to_tokens(histories[s:s + batch_size], model.cfg.max_len).to(device)  # (b, T)
            out += model.scores(tokens).topk(k, dim=-1).indices.tolist()  # host sync: the result
    finally:
        model.train(was_training)
    return out


def validate(model: SASRec, examples: Sequence[Example], cfg: SASRecTrainConfig, device) -> dict[str, float]:
    """Recall@10 / NDCG@10 of the model on `examples` (item ids; each item its own SID, so the same as by SID)."""
    ranked = rank_sasrec(model, [e.history for e in examples], EVAL_K, cfg.eval_batch, device)
    return ranking_metrics(ranked, [e.targets for e in examples], (EVAL_K,))


def eval_sample(examples: Sequence[Example], n: int, seed: int) -> list[Example]:
    """The examples scored at each validation: all for n = 0 (or n >= len), else a seeded sample in input order."""
    if n <= 0 or n >= len(examples):
        return list(examples)
    keep = np.sort(np.random.default_rng(seed).choice(len(examples), n, replace=False))
    return [examples[i] for i in keep]


def train_sasrec(sequences: Sequence[Sequence[int]], valid_examples: Sequence[Example] | None,
                 cfg: SASRecTrainConfig, model_cfg: SASRecConfig,
                 device: str | torch.device = "cpu") -> SASRecResult:
    """Train SASRec on `sequences` (see the module docstring); valid_examples None: no validation,
    cfg.steps steps, the last weights."""
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        return _train(sequences, valid_examples, cfg, model_cfg, torch.device(device))


def _train(sequences, valid_examples, cfg: SASRecTrainConfig, model_cfg: SASRecConfig,
           device: torch.device) -> SASRecResult:
    model = SASRec(model_cfg).to(device)
    rows = training_rows(sequences, model_cfg.max_len).to(device)  # (N, T + 1)
    opt = make_optimizer(model, cfg)
    batches = batch_order(len(rows), cfg.batch_size, torch.Generator().manual_seed(cfg.seed))
    val = eval_sample(valid_examples, cfg.eval_users, cfg.seed) if valid_examples else None
    curve: list[dict] = []
    best, best_step, best_state, since_best, step = -1.0, cfg.steps, None, 0, 0
    model.train()
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.steps, cfg)
        loss = sasrec_loss(model, rows[next(batches).to(device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if val is None or (step % cfg.eval_every and step < cfg.steps):
            continue
        m = validate(model, val, cfg, device)
        curve.append({"step": step, f"recall@{EVAL_K}": m[f"recall@{EVAL_K}"], f"ndcg@{EVAL_K}": m[f"ndcg@{EVAL_K}"]})
        if m[f"recall@{EVAL_K}"] > best:
            best, best_step, since_best = m[f"recall@{EVAL_K}"], step, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
            if since_best >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return SASRecResult(model=model.eval(), curve=curve, best_step=best_step, steps_run=step)


def tune_sasrec(sequences: Sequence[Sequence[int]], valid_examples: Sequence[Example], grid: SASRecGrid,
                cfg: SASRecTrainConfig, model_cfg: SASRecConfig,
                device: str | torch.device = "cpu") -> SASRecTuning:
    """Train one model per grid point (hidden, dropout from the grid; the rest of model_cfg and cfg as
    given) with validation, and keep the one with the best validation Recall@10."""
    trials: list[SASRecTrial] = []
    best_i, best_model = 0, None
    for i, (hidden, dropout, lr) in enumerate(itertools.product(grid.hidden, grid.dropout, grid.lr)):
        mcfg = dataclasses.replace(model_cfg, hidden=hidden, dropout=dropout)
        tcfg = dataclasses.replace(cfg, lr=lr)
        res = train_sasrec(sequences, valid_examples, tcfg, mcfg, device)
        recall = max((p[f"recall@{EVAL_K}"] for p in res.curve), default=float("nan"))
        trials.append(SASRecTrial(mcfg, tcfg, res.curve, res.best_step, res.steps_run, recall))
        if best_model is None or recall > trials[best_i].best_recall:
            best_i, best_model = i, res.model
    if best_model is None:
        raise ValueError("the grid is empty")
    return SASRecTuning(trials=trials, best=trials[best_i], model=best_model)
