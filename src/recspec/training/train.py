"""One training loop for target and plain (cross-entropy) draft models, with checkpoints and resume.

Loss: next-token cross-entropy on the window labels (every item after a user's first is predicted
once, its L codes and `<eos>`; see windows.py). AdamW, linear warm-up then cosine decay to 0 over
cfg.epochs passes; cfg.max_steps / cfg.time_limit_s only cut the run short (the schedule does not
change), so an interrupted run resumed later ends with the same weights as an uninterrupted one.

On disk (out_dir):
    last/               model (save_checkpoint) + optim.safetensors (AdamW moments) + optim.json
                        (AdamW step counters); recspec.json's extra["train"] holds the train state
    best/               the checkpoint with the best validation Recall@10 so far
    train_state.json    a copy of the train state, for people and scripts
Every folder is written beside its target and renamed into place. Nothing is pickled.

The batch order of epoch e is drawn from numpy's generator seeded with (cfg.seed, e), so a resumed
run replays it without saved RNG state. The model's initial weights are the caller's (seed them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from recspec.config import TrainConfig, to_dict
from recspec.data.datasets import SplitData
from recspec.data.sids import SIDIndex
from recspec.data.trie import SIDTrie
from recspec.data.vocab import Vocab
from recspec.errors import CheckpointError, DataError
from recspec.evaluation.evaluate import evaluate
from recspec.models.decoder import Decoder
from recspec.models.hf import CheckpointMeta, check_fits, load_checkpoint, save_checkpoint
from recspec.training.windows import IGNORE, Windows, bucketed_batches, build_windows

LOG_EVERY = 10  # optimiser steps between "train" log records
EVAL_K = 10  # beams and cut-off of the validation metric (Recall@10)
# TrainConfig fields that may change between a run and its resumption (they do not change the weights)
RESUMABLE_CHANGES = ("max_steps", "time_limit_s", "threads", "eval_every", "eval_users")


@dataclass(frozen=True)
class TrainResult:
    steps: int  # optimiser steps done, resumed ones included
    epochs_done: int  # complete passes over the training windows
    best_recall10: float  # best validation Recall@10 (NaN: never validated)
    seconds: float  # wall time of this call (training, validation and checkpoints)
    checkpoint: str  # out_dir/best, or out_dir/last where no validation ran
    stop_reason: str  # "done", "max_steps" or "time_limit"
    tokens_per_s: float  # training tokens (prompt + targets, no padding) per second of optimiser steps


@dataclass
class TrainState:
    """Where a run stands; serialised into every checkpoint of `last`."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # epoch of the next step
    best_recall10: float | None = None  # best validation Recall@10 so far
    best_step: int | None = None  # step of that validation


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step `step` (0-based) out of `total`:
    lr * (step + 1) / warmup during the warm-up, then lr * (1 + cos(pi * p)) / 2 with
    p = (step - warmup) / (total - warmup) going from 0 to 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * p))


def next_token_loss(model: Decoder, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """tokens, labels (B, T) -> mean cross-entropy over the labelled positions (scalar).
    The LM head runs on the labelled positions only."""
    pos = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)  # (B, T)
    h = model.hidden(tokens, pos)  # (B, T, C) causal attention, right padding is never attended
    keep = labels != IGNORE  # (B, T)
    logits = model.lm_head(h[keep])  # (n, V); boolean indexing syncs with the host, fine in training
    return F.cross_entropy(logits.float(), labels[keep])


def make_optimizer(model: Decoder, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (projections, embeddings), none on norm gains."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


# --- optimiser state as safetensors + json -------------------------------------------------------
def optimizer_tensors(opt: torch.optim.AdamW, model: Decoder) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """AdamW state -> ({"<param>.exp_avg" / ".exp_avg_sq": moment}, {"<param>": step counter})."""
    names = {p: n for n, p in model.named_parameters()}
    tensors, steps = {}, {}
    for p, st in opt.state.items():
        n = names[p]
        tensors[f"{n}.exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
        tensors[f"{n}.exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
        steps[n] = float(st["step"])
    return tensors, steps


def load_optimizer_tensors(opt: torch.optim.AdamW, model: Decoder, tensors: dict[str, torch.Tensor],
                           steps: dict[str, float]) -> None:
    """Inverse of `optimizer_tensors`."""
    for n, p in model.named_parameters():
        if n in steps:
            opt.state[p] = {"step": torch.tensor(steps[n], dtype=torch.float32),
                            "exp_avg": tensors[f"{n}.exp_avg"].to(p.device, p.dtype),
                            "exp_avg_sq": tensors[f"{n}.exp_avg_sq"].to(p.device, p.dtype)}


# --- files ----------------------------------------------------------------------------------------
def _swap_in(staging: str, folder: str) -> None:
    """Replace `folder` by the finished `staging` folder (rename; the old one is kept as .old until then)."""
    old = folder + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.isdir(folder):
        os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


def _write_json(path: str, obj: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def last_folder(out_dir: str) -> str | None:
    """out_dir/last, or its previous version where a crash hit between the two renames of a swap."""
    for name in ("last", "last.old"):
        path = os.path.join(out_dir, name)
        if os.path.isfile(os.path.join(path, "optim.json")):
            return path
    return None


def data_hash(windows: Windows) -> str:
    """Short hash of the training windows (a resumed run must see the same data)."""
    h = hashlib.sha256(windows.tokens.numpy().tobytes())
    h.update(windows.labels.numpy().tobytes())
    return h.hexdigest()[:16]


class _Trainer:
    """Holds one run's fixed context; `run` is the loop."""

    def __init__(self, model: Decoder, data: SplitData, index: SIDIndex, vocab: Vocab, trie: SIDTrie,
                 cfg: TrainConfig, out_dir: str, role: str, on_log: Callable[[dict], None]):
        self.model, self.data, self.index, self.vocab, self.trie = model, data, index, vocab, trie
        self.cfg, self.out_dir, self.role, self.log = cfg, out_dir, role, on_log
        self.device = next(model.parameters()).device
        self.windows = build_windows(data.train, vocab, index, cfg.window_items, cfg.window_stride)
        if not len(self.windows):
            raise DataError(f"{data.name}: no training windows (every training sequence has fewer than 2 items)")
        self.per_epoch = math.ceil(len(self.windows) / cfg.batch_size)
        self.total = cfg.epochs * self.per_epoch
        self.opt = make_optimizer(model, cfg)
        self.data_hash = data_hash(self.windows)
        self.state = TrainState()
        self.t0 = time.perf_counter()
        self.train_s, self.tokens = 0.0, 0
        self.saved_step = -1  # step of the newest out_dir/last

    # --- checkpoints ------------------------------------------------------------------------------
    def _identity(self) -> dict:
        """What a resumed run must share with the saved one."""
        cfg = {k: v for k, v in to_dict(self.cfg).items() if k not in RESUMABLE_CHANGES}
        return {"config": cfg, "data_hash": self.data_hash, "role": self.role}

    def _meta(self, **extra) -> CheckpointMeta:
        train = {**self._identity(), "train_config": to_dict(self.cfg), "state": dataclasses.asdict(self.state),
                 "total_steps": self.total, "dataset": self.data.name, **extra}
        return CheckpointMeta(self.vocab, self.index.fingerprint(), self.role, extra={"train": train})

    def save_last(self) -> None:
        folder = os.path.join(self.out_dir, "last")
        staging = folder + ".partial"
        save_checkpoint(self.model, self._meta(), staging)
        tensors, steps = optimizer_tensors(self.opt, self.model)
        save_file(tensors, os.path.join(staging, "optim.safetensors"), metadata={"format": "pt"})
        _write_json(os.path.join(staging, "optim.json"), {"step": steps})
        _swap_in(staging, folder)
        self.saved_step = self.state.step
        _write_json(os.path.join(self.out_dir, "train_state.json"),
                    {**dataclasses.asdict(self.state), "seed": self.cfg.seed, "total_steps": self.total,
                     "data_hash": self.data_hash})
        self.log({"event": "checkpoint", "step": self.state.step, "path": folder})

    def resume(self) -> None:
        """Continue from out_dir/last where it exists; refuse one saved under a different setup."""
        folder = last_folder(self.out_dir)
        if folder is None:
            return
        saved, meta = load_checkpoint(folder)
        check_fits(meta, self.vocab, self.index.fingerprint(), folder)
        train = (meta.extra or {}).get("train", {})
        mine = self._identity()
        diff = sorted(k for k in mine if train.get(k) != mine[k])
        if saved.cfg != self.model.cfg or diff:
            what = diff or ["model config"]
            raise CheckpointError(f"{folder}: saved under a different {', '.join(what)}; "
                                  "use another out_dir or delete it to start over")
        self.model.load_state_dict(saved.state_dict())
        with open(os.path.join(folder, "optim.json")) as f:
            steps = json.load(f)["step"]
        load_optimizer_tensors(self.opt, self.model, load_file(os.path.join(folder, "optim.safetensors")), steps)
        self.state = TrainState(**train["state"])
        self.saved_step = self.state.step
        self.log({"event": "resume", "step": self.state.step, "epoch": self.state.epoch, "path": folder})

    # --- validation -------------------------------------------------------------------------------
    def validate(self) -> None:
        """Recall@10 / NDCG@10 on the first cfg.eval_users validation users; keep the best checkpoint."""
        examples = self.data.valid[: self.cfg.eval_users]
        if not examples:
            return
        m = evaluate(self.model, self.trie, self.vocab, self.index, examples, K=EVAL_K,
                     batch_size=self.cfg.batch_size, ks=(EVAL_K,))
        recall, ndcg = m[f"recall@{EVAL_K}"], m[f"ndcg@{EVAL_K}"]
        self.log({"event": "eval", "step": self.state.step, "epoch": self.state.epoch,
                  "recall@10": recall, "ndcg@10": ndcg, "users": m["users"]})
        if self.state.best_recall10 is None or recall > self.state.best_recall10:
            self.state.best_recall10, self.state.best_step = recall, self.state.step
            folder = os.path.join(self.out_dir, "best")
            save_checkpoint(self.model, self._meta(metrics={"recall@10": recall, "ndcg@10": ndcg}), folder)
            self.log({"event": "best", "step": self.state.step, "recall@10": recall, "path": folder})

    # --- the loop ---------------------------------------------------------------------------------
    def step(self, rows: torch.Tensor) -> torch.Tensor:
        """One optimiser step on window rows (b,) -> the batch loss (scalar tensor, no host sync)."""
        t = time.perf_counter()
        tokens, labels = (x.to(self.device) for x in self.windows.batch(rows))  # (b, T) each
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.state.step, self.total, self.cfg)
        loss = next_token_loss(self.model, tokens, labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.state.step += 1
        self.tokens += int(self.windows.lengths[rows].sum())
        self.train_s += time.perf_counter() - t  # exact on the CPU; on a GPU it lags by the queued work
        return loss.detach()

    def stop_reason(self) -> str | None:
        if self.state.step >= self.total:
            return "done"
        if self.cfg.max_steps and self.state.step >= self.cfg.max_steps:
            return "max_steps"
        if self.cfg.time_limit_s and time.perf_counter() - self.t0 >= self.cfg.time_limit_s:
            return "time_limit"
        return None

    def epoch_batches(self) -> list[torch.Tensor]:
        """The rest of the current epoch's batches (all of them unless resuming mid-epoch)."""
        rng = np.random.default_rng([self.cfg.seed, self.state.epoch])
        batches = bucketed_batches(self.windows.lengths, self.cfg.batch_size, rng)
        return batches[self.state.step - self.state.epoch * self.per_epoch:]

    def run_epoch(self, bar: tqdm) -> str | None:
        """Steps to the end of the epoch or an earlier stop, validating on schedule -> stop reason."""
        loss_sum, n = torch.zeros((), device=self.device), 0
        for rows in self.epoch_batches():
            loss_sum += self.step(rows)
            n += 1
            bar.update(1)
            end_of_epoch = self.state.step % self.per_epoch == 0
            if self.state.step % LOG_EVERY == 0 or end_of_epoch:
                self._log_train(bar, float(loss_sum) / n)  # host sync: once per LOG_EVERY steps
                loss_sum, n = torch.zeros((), device=self.device), 0
            if self.cfg.eval_every and self.state.step % self.cfg.eval_every == 0:
                self.validate()
                self.save_last()
            reason = self.stop_reason()
            if reason or end_of_epoch:
                return reason
        return self.stop_reason()

    def _log_train(self, bar: tqdm, loss: float) -> None:
        bar.set_postfix(loss=f"{loss:.3f}")
        self.log({"event": "train", "step": self.state.step, "epoch": self.state.epoch, "loss": loss,
                  "lr": lr_at(self.state.step - 1, self.total, self.cfg),
                  "tokens_per_s": self.tokens / max(self.train_s, 1e-9)})

    def run(self, progress: bool) -> str:
        self.model.train()
        reason = self.stop_reason()
        with tqdm(total=self.total, initial=self.state.step, unit="step", disable=not progress) as bar:
            while reason is None:
                reason = self.run_epoch(bar)
                if self.state.step % self.per_epoch == 0 and self.state.step > self.state.epoch * self.per_epoch:
                    self.state.epoch += 1
                    if not self.cfg.eval_every:
                        self.validate()
                        self.save_last()
        if self.saved_step != self.state.step:
            self.save_last()
        return reason


def train(model: Decoder, data: SplitData, index: SIDIndex, vocab: Vocab, trie: SIDTrie, cfg: TrainConfig,
          out_dir: str | os.PathLike, role: str = "target", on_log: Callable[[dict], None] | None = None,
          progress: bool = True) -> TrainResult:
    """Train `model` in place on data.train (resuming from out_dir/last where it exists)."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        tr = _Trainer(model, data, index, vocab, trie, cfg, out_dir, role, on_log or (lambda _: None))
        tr.resume()
        reason = tr.run(progress)
    finally:
        torch.set_num_threads(threads)
    best = os.path.join(out_dir, "best")
    best_r = tr.state.best_recall10
    return TrainResult(steps=tr.state.step, epochs_done=tr.state.step // tr.per_epoch,
                       best_recall10=float("nan") if best_r is None else best_r,
                       seconds=time.perf_counter() - tr.t0,
                       checkpoint=best if os.path.isdir(best) else os.path.join(out_dir, "last"),
                       stop_reason=reason, tokens_per_s=tr.tokens / max(tr.train_s, 1e-9))
