"""The target recipe: choose the training length on validation, then fit the test-time model on the
train and valid periods for that length.

1. Selection: a fresh model trains on the train period (`TrainConfig.fit = "train"`) for cfg.steps
   (the cosine schedule ends there), validated on every validation user every cfg.eval_every steps,
   stopped early after cfg.patience validations without a new best. The best step is kept.
2. Final fit: a fresh model with the same seed trains on the train + valid periods for the same number
   of epochs as the best step, i.e. best_step * (train+valid windows / train windows) steps, its own
   schedule ending there. Nothing is left to validate on, so its last checkpoint is the model.

Every baseline evaluated on the test period is fitted on the same train + valid sequences
(`SplitData.fit_sequences("test")`), and chosen on the valid period the same way.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from recspec.config import ModelConfig, TrainConfig
from recspec.data.catalog import Catalog
from recspec.models.decoder import Decoder
from recspec.training.train import TrainResult, train
from recspec.training.windows import build_windows


@dataclass(frozen=True)
class RecipeResult:
    select: TrainResult  # the selection run (train period, validated)
    final: TrainResult | None  # the final fit (train + valid periods); None when not asked for
    final_steps: int  # steps of the final fit (0: none)
    checkpoint: str  # the test-time model: final/last, or the selection's best where no final fit ran


def final_fit_steps(best_step: int, train_windows: int, all_windows: int) -> int:
    """Steps of the final fit: as many epochs over the train + valid windows as the best step made over
    the train windows (at least 1)."""
    return max(1, math.ceil(best_step * all_windows / max(1, train_windows)))


def _windows(cat: Catalog, cfg: TrainConfig, split: str) -> int:
    return len(build_windows(cat.data.fit_sequences(split), cat.vocab, cat.index, cfg.window_items, cfg.window_stride))


def run_recipe(model_cfg: ModelConfig, cat: Catalog, cfg: TrainConfig, out_dir: str, device: str = "cpu",
               final_fit: bool = True, role: str = "target", on_log: Callable[[dict], None] | None = None,
               progress: bool = True) -> RecipeResult:
    """Selection in out_dir (best/, last/ as `train` writes them), then (final_fit) the final fit in
    out_dir/final (its last/ is the test-time model); both resume. Without final_fit, one run of cfg as
    given (cfg.fit "train+valid": a direct fit, OUT/last)."""
    def fresh() -> Decoder:
        torch.manual_seed(cfg.seed)
        return Decoder(model_cfg).to(device)

    log = on_log or (lambda _: None)
    select_cfg = cfg if not final_fit else dataclasses.replace(cfg, fit="train")
    select = train(fresh(), cat.data, cat.index, cat.vocab, cat.trie, select_cfg, out_dir,
                   role=role, on_log=lambda r: log({**r, "phase": "select"}), progress=progress)
    if not final_fit:
        return RecipeResult(select, None, 0, select.checkpoint)
    chosen = select.best_step if select.best_step is not None else select.steps
    steps = final_fit_steps(chosen, _windows(cat, cfg, "valid"), _windows(cat, cfg, "test"))
    final_cfg = dataclasses.replace(cfg, fit="train+valid", steps=steps, max_steps=0, patience=0, time_limit_s=0.0)
    final = train(fresh(), cat.data, cat.index, cat.vocab, cat.trie, final_cfg, os.path.join(out_dir, "final"),
                  role=role, on_log=lambda r: log({**r, "phase": "final"}), progress=progress)
    return RecipeResult(select, final, steps, final.checkpoint)
