"""The main job: build SIDs for MovieLens-100K, train a small target on the CPU, evaluate it against
popularity, item transitions and SASRec (each fitted on the train period, as the target; 95% intervals,
the quality gate), and write a JSON report. Running it again reuses the finished run."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass

import torch

from recspec.config import ModelConfig, TrainConfig, to_dict
from recspec.data.catalog import SIDBuild, open_catalog
from recspec.data.sids import collision_stats
from recspec.evaluation.evaluate import evaluate, evaluate_popularity, recommend
from recspec.models.decoder import Decoder
from recspec.models.hf import check_fits, load_checkpoint
from recspec.training.fit_baselines import compare_with_baselines
from recspec.training.train import train


@dataclass(frozen=True)
class DemoConfig:
    data: str = "ml-100k"  # data spec: a folder or 'ml-100k'
    out: str = "runs/demo"  # run folder (index, checkpoints, report)
    size: str = "demo"  # model preset
    epochs: int = 4  # training passes (the cosine schedule ends with the last)
    max_steps: int = 0  # stop after this many optimiser steps (0: all epochs); never a clock
    window_stride: int = 20  # items between training windows (each item is a target once)
    batch_size: int = 32  # sequences per step
    lr: float = 3e-3  # peak learning rate
    seed: int = 0
    sasrec_steps: int = 200  # SASRec baseline: steps per grid point (width 64, dropout 0.2 / 0.5, lr 3e-3)


def _sasrec(cfg: DemoConfig):
    from recspec.training.fit_baselines import SASRecSetup
    from recspec.training.sasrec import SASRecGrid, SASRecTrainConfig

    return SASRecSetup(train=SASRecTrainConfig(steps=cfg.sasrec_steps, eval_every=max(1, cfg.sasrec_steps // 10),
                                               warmup_steps=min(100, cfg.sasrec_steps // 10), seed=cfg.seed),
                       grid=SASRecGrid(hidden=(64,), dropout=(0.2, 0.5), lr=(3e-3,)))


def run_demo(cfg: DemoConfig, on_log=None, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    os.makedirs(cfg.out, exist_ok=True)
    cat = open_catalog(cfg.data, index_dir=cfg.out, build=SIDBuild())  # codebooks sized from the catalogue
    torch.manual_seed(cfg.seed)
    model = Decoder(ModelConfig.preset(cat.vocab.size, cfg.size))
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, max_steps=cfg.max_steps,
                       seed=cfg.seed, eval_users=300, warmup_steps=50, window_stride=cfg.window_stride)
    result = train(model, cat.data, cat.index, cat.vocab, cat.trie, tcfg, os.path.join(cfg.out, "target"),
                   on_log=on_log, progress=progress)
    best, meta = load_checkpoint(result.checkpoint)
    check_fits(meta, cat.vocab, cat.index.fingerprint(), result.checkpoint)
    test = list(cat.data.test)
    ours = evaluate(best, cat.trie, cat.vocab, cat.index, test, K=20, batch_size=64)
    pop = evaluate_popularity(cat.data, cat.trie, test)
    lists = recommend(best, cat.trie, cat.vocab, cat.index, [e.history for e in test], 10).sids.tolist()
    quality, _ = compare_with_baselines(cat, "test", lists, (10,), _sasrec(cfg), train_only=True, seed=cfg.seed)
    report = {
        "data": cfg.data, "items": cat.data.num_items, "users_test": len(test),
        "sid_levels": cat.index.num_levels, "sid_collisions": dataclasses.asdict(collision_stats(cat.index)),
        "model": to_dict(best.cfg), "parameters": best.cfg.num_parameters(),
        "train": {"steps": result.steps, "epochs_done": result.epochs_done, "stop_reason": result.stop_reason,
                  "best_valid_recall@10": result.best_recall10, "checkpoint": result.checkpoint},
        "test": {"recspec": ours, "popularity": pop},  # K=20 beams: Recall/NDCG@{1,...,20} of one list of 20
        "test_beams": 20,
        "quality_beams": 10,  # the quality rows' target lists: K=10 beams (a beam search's top 10 depends on K)
        "quality": quality,  # target and baselines, all fitted on the train period, with intervals and the gate
        "seconds": round(time.perf_counter() - t0, 1),
    }
    with open(os.path.join(cfg.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report
