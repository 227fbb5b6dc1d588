"""Fit every baseline on what a split allows and rank its users: popularity, transitions, SASRec.

Each is fitted on `data.fit_sequences(split)`: the train period for "valid", train + valid for "test".
SASRec is chosen without the test period: every grid point trains on the train period and is scored
on the valid users (`tune_sasrec`); then
- split "valid": the chosen model ranks the valid users (it was selected on them, so its valid
  numbers are optimistic);
- split "test": a fresh model with the chosen configuration is trained on train + valid for the chosen
  number of steps (its best validation step, the cosine schedule ending there), without validation,
  and ranks the test users.

This module sits in training (not evaluation, beside the non-neural baselines) because it trains
SASRec, and training already builds on evaluation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from recspec.data.datasets import SplitData
from recspec.evaluation.baselines import fit_transitions, history_margin, without_history
from recspec.evaluation.metrics import popularity_ranking
from recspec.models.sasrec import SASRecConfig
from recspec.training.sasrec import (SASRecGrid, SASRecTrainConfig, SASRecTrial, rank_sasrec, train_sasrec,
                                     tune_sasrec)

MODELS = ("popularity", "transition", "sasrec")


@dataclass(frozen=True)
class SASRecSetup:
    """How `fit_and_rank_baselines` tunes and trains SASRec; the grid sets hidden, dropout and lr."""

    train: SASRecTrainConfig = SASRecTrainConfig()  # steps, batches, schedule, validation, seed
    grid: SASRecGrid = SASRecGrid()  # hidden x dropout x lr tried on the valid split
    layers: int = 2  # SASRecConfig.layers
    heads: int = 2  # SASRecConfig.heads
    max_len: int = 50  # SASRecConfig.max_len


@dataclass(frozen=True)
class BaselineRankings:
    rankings: dict[str, list[list[int]]]  # model -> (U, k) item ids per user of the split, best first
    info: dict[str, dict] = field(default_factory=dict)  # model -> how it was fitted (SASRec: trials, curves)


def _trial_info(t: SASRecTrial) -> dict:
    return {"hidden": t.model_cfg.hidden, "dropout": t.model_cfg.dropout, "lr": t.train_cfg.lr,
            "best_step": t.best_step, "steps_run": t.steps_run, "best_recall@10": t.best_recall, "curve": t.curve}


def fit_and_rank_sasrec(data: SplitData, split: str, k: int, setup: SASRecSetup,
                        device: str | torch.device = "cpu", refit: bool = True) -> tuple[list[list[int]], dict]:
    """SASRec's (U, k) ranking of the split's users and its info (see the module docstring); refit False:
    the test users are ranked by the tuned model itself (trained on the train period only)."""
    base = SASRecConfig(num_items=data.num_items, layers=setup.layers, heads=setup.heads, max_len=setup.max_len)
    tuning = tune_sasrec(data.train, data.valid, setup.grid, setup.train, base, device)
    info = {"trials": [_trial_info(t) for t in tuning.trials], "chosen": _trial_info(tuning.best)}
    model = tuning.model
    if split == "test" and refit:
        again = dataclasses.replace(tuning.best.train_cfg, steps=tuning.best.best_step)
        model = train_sasrec(data.fit_sequences("test"), None, again, tuning.best.model_cfg, device).model
        info["refit_steps"] = again.steps
    examples = data.valid if split == "valid" else data.test
    ranked = rank_sasrec(model, [e.history for e in examples], k, setup.train.eval_batch, device)
    return ranked, info


def fit_and_rank_baselines(data: SplitData, split: str, k: int, sasrec: SASRecSetup | None = SASRecSetup(),
                           device: str | torch.device = "cpu", window: int = 3, last: int = 3,
                           exclude_history: bool = False, train_only: bool = False) -> BaselineRankings:
    """Top-k item ids of every baseline for every example of `split` ("valid" | "test"), in example order.
    sasrec None: popularity and transitions only; window, last: `fit_transitions` / `Transitions.rank`;
    exclude_history: no user is recommended an item of their history (as the target's decoding option);
    train_only: fit on the train period even for the test users (beside a target that saw only that)."""
    seqs = data.train if train_only else data.fit_sequences(split)
    data.fit_sequences(split)  # checks split
    histories = [e.history for e in (data.valid if split == "valid" else data.test)]
    k_all = min(data.num_items, k + (history_margin(histories) if exclude_history else 0))  # ranked before dropping
    top = popularity_ranking(seqs, data.num_items, k_all)
    rankings = {"popularity": [list(top) for _ in histories],
                "transition": fit_transitions(seqs, data.num_items, window).rank(histories, k_all, last)}
    info: dict[str, dict] = {"popularity": {"fit_sequences": len(seqs)},
                             "transition": {"fit_sequences": len(seqs), "window": window, "last": last}}
    if sasrec is not None:
        rankings["sasrec"], info["sasrec"] = fit_and_rank_sasrec(data, split, k_all, sasrec, device, not train_only)
    if exclude_history:
        rankings = {name: without_history(r, histories, k) for name, r in rankings.items()}
    return BaselineRankings(rankings=rankings, info=info)


def compare_with_baselines(catalog, split: str, target: list[list[int]] | None, ks=(10,),
                           sasrec: SASRecSetup | None = SASRecSetup(), device: str | torch.device = "cpu",
                           exclude_history: bool = False, n_boot: int = 1000, seed: int = 0,
                           fitted: BaselineRankings | None = None,
                           extra: dict[str, list[list[int]]] | None = None,
                           train_only: bool = False) -> tuple[list[dict], dict]:
    """Quality rows (`evaluation.quality`) of the target's lists and every baseline's on the split's users.

    target: the target's (U, >= max(ks)) SID rows per example of the split, in example order (None: baselines
    only). Baselines are fitted as `fit_and_rank_baselines` says, with the same exclude_history, unless
    `fitted` (its result for this split) is given; extra: more named SID-row lists (e.g. the target in
    another precision). -> (rows, info)."""
    from recspec.evaluation.evaluate import item_sid_rows, target_sids
    from recspec.evaluation.quality import TARGET, quality_rows

    data = catalog.data
    examples = data.valid if split == "valid" else data.test
    base = fitted or fit_and_rank_baselines(data, split, max(ks), sasrec, device, exclude_history=exclude_history,
                                            train_only=train_only)
    ranked = {TARGET: target} if target is not None else {}
    ranked.update(extra or {})
    ranked.update({name: item_sid_rows(catalog.trie, r) for name, r in base.rankings.items()})
    rows = quality_rows(ranked, target_sids(catalog.trie, examples), ks, split, n_boot, seed)
    fitted = "train+valid" if split == "test" and not train_only else "train"
    for r in rows:
        r.update(fit=fitted, exclude_history=exclude_history)
    return rows, base.info
