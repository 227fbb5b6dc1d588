"""Target and plain (cross-entropy) draft training: the language-model loss on every next item.

Loss: next-token cross-entropy on the window labels (every item after a user's first is predicted
once, its L codes and `<eos>`; see windows.py). The optimiser, schedule, checkpoints and resume are
the shared loop's (loop.py): AdamW, linear warm-up then cosine decay to 0 over cfg.epochs passes;
an interrupted run resumed later ends with the same weights as an uninterrupted one. `best/` keeps
the checkpoint with the best validation Recall@10.

The batch order of epoch e is drawn from numpy's generator seeded with (cfg.seed, e), so a resumed
run replays it without saved RNG state. The model's initial weights are the caller's (seed them).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from recspec.config import TrainConfig
from recspec.data.datasets import SplitData
from recspec.data.sids import SIDIndex
from recspec.data.trie import SIDTrie
from recspec.data.vocab import Vocab
from recspec.errors import DataError
from recspec.evaluation.evaluate import evaluate
from recspec.models.decoder import Decoder
from recspec.training.loop import RunInfo, TrainLoop, run_resumable
from recspec.training.windows import IGNORE, Windows, bucketed_batches, build_windows

EVAL_K = 10  # beams and cut-off of the validation metric (Recall@10)


@dataclass(frozen=True)
class TrainResult:
    steps: int  # optimiser steps done, resumed ones included
    epochs_done: int  # complete passes over the training windows
    best_recall10: float  # best validation Recall@10 (NaN: never validated)
    best_step: int | None  # step of that validation (None: never validated)
    seconds: float  # wall time of this call (training, validation and checkpoints)
    checkpoint: str  # out_dir/best, or out_dir/last where no validation ran
    stop_reason: str  # "done", "max_steps", "early_stop" or "time_limit"
    tokens_per_s: float  # training tokens (prompt + targets, no padding) per second of optimiser steps


def next_token_loss(model: Decoder, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """tokens, labels (B, T) -> mean cross-entropy over the labelled positions (scalar).
    The LM head runs on the labelled positions only."""
    pos = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)  # (B, T)
    h = model.hidden(tokens, pos)  # (B, T, C) causal attention, right padding is never attended
    keep = labels != IGNORE  # (B, T)
    logits = model.lm_head(h[keep])  # (n, V); boolean indexing syncs with the host, fine in training
    return F.cross_entropy(logits.float(), labels[keep])


def data_hash(windows: Windows) -> str:
    """Short hash of the training windows (a resumed run must see the same data)."""
    h = hashlib.sha256(windows.tokens.numpy().tobytes())
    h.update(windows.labels.numpy().tobytes())
    return h.hexdigest()[:16]


class WindowLoop(TrainLoop):
    """A TrainLoop over next-token windows (`self.windows`, set by the subclass): batches of similar lengths
    in a seeded order per epoch (a function of (cfg.seed, epoch) only), next-token cross-entropy."""

    windows: Windows

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        rng = np.random.default_rng([self.cfg.seed, epoch])
        return bucketed_batches(self.windows.lengths, self.cfg.batch_size, rng)

    def loss(self, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        tokens, labels = (x.to(self.device) for x in self.windows.batch(rows))  # (b, T) each
        return next_token_loss(self.model, tokens, labels), int(self.windows.lengths[rows].sum())


class _Trainer(WindowLoop):
    """Windows of data.train as batches, next-token cross-entropy, validation Recall@10."""

    metric = f"recall@{EVAL_K}"

    def __init__(self, model: Decoder, data: SplitData, index: SIDIndex, vocab: Vocab, trie: SIDTrie,
                 cfg: TrainConfig, out_dir: str, role: str, on_log: Callable[[dict], None]):
        self.data, self.index, self.vocab, self.trie = data, index, vocab, trie
        sequences = data.fit_sequences("test" if cfg.fit == "train+valid" else "valid")
        self.windows = build_windows(sequences, vocab, index, cfg.window_items, cfg.window_stride)
        if not len(self.windows):
            raise DataError(f"{data.name}: no training windows (every {cfg.fit} sequence has fewer than 2 items)")
        info = RunInfo(vocab, index.fingerprint(), role, data.name, data_hash(self.windows))
        super().__init__(model, cfg, out_dir, info, math.ceil(len(self.windows) / cfg.batch_size), on_log)

    def evaluate(self) -> dict | None:
        """Recall@10 / NDCG@10 on the first cfg.eval_users validation users (all where 0); None for a
        train+valid fit, which has trained on the validation period."""
        examples = self.data.valid[: self.cfg.eval_users or None]
        if not examples or self.cfg.fit == "train+valid":
            return None
        return evaluate(self.model, self.trie, self.vocab, self.index, examples, K=EVAL_K,
                        batch_size=self.cfg.batch_size, ks=(EVAL_K,))


def train(model: Decoder, data: SplitData, index: SIDIndex, vocab: Vocab, trie: SIDTrie, cfg: TrainConfig,
          out_dir: str | os.PathLike, role: str = "target", on_log: Callable[[dict], None] | None = None,
          progress: bool = True) -> TrainResult:
    """Train `model` in place on data.train (resuming from out_dir/last where it exists)."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    tr, reason = run_resumable(lambda: _Trainer(model, data, index, vocab, trie, cfg, out_dir, role,
                                                on_log or (lambda _: None)), cfg.threads, progress)
    best = tr.state.best
    return TrainResult(steps=tr.state.step, epochs_done=tr.state.step // tr.per_epoch,
                       best_recall10=float("nan") if best is None else best, best_step=tr.state.best_step,
                       seconds=time.perf_counter() - tr.t0, checkpoint=tr.checkpoint(),
                       stop_reason=reason, tokens_per_s=tr.tokens / max(tr.train_s, 1e-9))
