"""The resumable optimiser loop shared by target / CE-draft training (train.py) and draft alignment
(distill.py): AdamW, warm-up + cosine schedule, checkpoints, exact resume, validation that keeps the best.

A subclass says what one epoch's batches are, what a batch's loss is and how to validate
(`epoch_batches`, `loss`, `evaluate`); the loop does the rest. The schedule spans cfg.steps optimiser
steps, fixed up front (cfg.epochs passes where cfg.steps is 0), and its cosine decay ends there;
cfg.max_steps / cfg.time_limit_s only cut a run short, so an interrupted run resumed later ends with
the weights of an uninterrupted one. cfg.patience stops a run early once that many validations in a
row have not beaten the best. The batches of epoch e must be a function of (cfg.seed, e): a resumed
run replays them without saved RNG state.

Mixed precision (cfg.precision "bf16", or "auto" on a GPU): each step's forward and loss run under
their own `torch.autocast` context, entered and left per step. One autocast context around a whole
run is refused: autocast caches its bf16 copy of each weight until the context exits, so every step's
forward would see the initial weights while AdamW updated the fp32 ones, and the model learned would
only work on that stale copy (it scored ~0 once evaluated outside the context; tests/training).

The config is duck-typed: any frozen dataclass with the fields lr, warmup_steps, weight_decay,
grad_clip, seed, max_steps, threads and either steps or epochs (TrainConfig, DistillConfig,
UnrollConfig); steps, epochs, patience, eval_every, time_limit_s and precision are optional (0, 0, 0,
0, 0, "auto").

The model is any module with a `cfg`; checkpoints are `save_checkpoint` folders unless a subclass
overrides `save_model` / `load_model` (feature heads: `models.heads.save_head`).

On disk (out_dir):
    last/               model (save_checkpoint) + optim.safetensors (AdamW moments) + optim.json
                        (AdamW step counters); recspec.json's extra["train"] holds the train state
    best/               the checkpoint with the best validation value of the loop's `metric` so far
    train_state.json    a copy of the train state, for people and scripts
Every folder is written beside its target and renamed into place. Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from recspec.config import to_dict
from recspec.data.vocab import Vocab
from recspec.errors import CheckpointError
from recspec.models.decoder import Decoder
from recspec.models.hf import CheckpointMeta, check_fits, load_checkpoint, save_checkpoint

LOG_EVERY = 10  # optimiser steps between "train" log records
# config fields that may change between a run and its resumption (they do not change the weights)
RESUMABLE_CHANGES = ("max_steps", "time_limit_s", "threads", "eval_every", "eval_users", "optimizer_state")


@dataclass
class TrainState:
    """Where a run stands; serialised into every checkpoint of `last`."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # epoch of the next step
    best: float | None = None  # best validation value of the loop's metric so far (higher is better)
    best_step: int | None = None  # step of that validation
    stale: int = 0  # validations in a row since the best one (for cfg.patience)

    @staticmethod
    def from_dict(d: dict) -> "TrainState":
        d = dict(d)
        if "best_recall10" in d:  # runs saved before the loop was shared named it after its metric
            d["best"] = d.pop("best_recall10")
        return TrainState(**d)


def lr_at(step: int, total: int, cfg) -> float:
    """Learning rate of optimiser step `step` (0-based) out of `total`:
    lr * (step + 1) / warmup during the warm-up, then lr * (1 + cos(pi * p)) / 2 with
    p = (step - warmup) / (total - warmup) going from 0 to 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * p))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a training step: bf16 for "bf16" (and "auto" on a GPU), None for fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def step_context(dtype: torch.dtype | None, device: torch.device):
    """A fresh autocast context for one step's forward and loss (nullcontext for fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def make_optimizer(model: Decoder, cfg) -> torch.optim.AdamW:
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
    weights_only = os.path.join(out_dir, "last")  # saved with optimizer_state=False: `resume` refuses it
    return weights_only if os.path.isfile(os.path.join(weights_only, "model.safetensors")) else None


@dataclass(frozen=True)
class RunInfo:
    """What a run's checkpoints record about it besides the weights."""

    vocab: Vocab
    index_fingerprint: str  # SIDIndex.fingerprint() of the catalogue
    role: str  # "target" or "draft"
    dataset: str  # data set name
    data_hash: str  # identifies the training data; a resumed run must see the same


class TrainLoop:
    """One run's model, optimiser, state and files. Subclasses fill in the three hooks."""

    metric = "recall@10"  # key of `evaluate`'s dict kept in state.best (higher is better)
    # seconds, for cfg.time_limit_s and throughput only; what a run learns never depends on it unless a time
    # limit is set (tests replace it with a fake clock)
    clock: Callable[[], float] = staticmethod(time.perf_counter)

    def __init__(self, model: Decoder, cfg, out_dir: str, info: RunInfo, per_epoch: int,
                 on_log: Callable[[dict], None]):
        self.model, self.cfg, self.out_dir, self.info, self.log = model, cfg, out_dir, info, on_log
        self.device = next(model.parameters()).device
        self.per_epoch = per_epoch  # optimiser steps per epoch
        self.total = getattr(cfg, "steps", 0) or cfg.epochs * per_epoch
        self.amp = autocast_dtype(getattr(cfg, "precision", "auto"), self.device)
        self.opt = make_optimizer(model, cfg)
        self.state = TrainState()
        self.t0 = self.clock()
        self.train_s, self.tokens = 0.0, 0
        self.saved_step = -1  # step of the newest out_dir/last
        self.validated_step = -1  # step of the newest validation

    # --- hooks ------------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list:
        """Every batch of epoch `epoch`, in order (a function of (cfg.seed, epoch) only)."""
        raise NotImplementedError

    def loss(self, batch) -> tuple[torch.Tensor, int]:
        """One batch -> its loss (scalar tensor, with grad) and its training tokens (for tokens/s)."""
        raise NotImplementedError

    def evaluate(self) -> dict | None:
        """Validation values, `metric` among them; None where there is nothing to validate on."""
        raise NotImplementedError

    @property
    def eval_every(self) -> int:
        return getattr(self.cfg, "eval_every", 0)

    # --- checkpoints ------------------------------------------------------------------------------
    def save_model(self, folder: str, meta: CheckpointMeta) -> None:
        """Write the model's checkpoint folder (weights and meta; the optimiser state is written beside it)."""
        save_checkpoint(self.model, meta, folder)

    def load_model(self, folder: str):
        """A checkpoint folder `save_model` wrote -> (a model with its `cfg`, its CheckpointMeta)."""
        return load_checkpoint(folder)

    def _identity(self) -> dict:
        """What a resumed run must share with the saved one."""
        cfg = {k: v for k, v in to_dict(self.cfg).items() if k not in RESUMABLE_CHANGES}
        return {"config": cfg, "data_hash": self.info.data_hash, "role": self.info.role}

    def _meta(self, **extra) -> CheckpointMeta:
        train = {**self._identity(), "train_config": to_dict(self.cfg), "state": dataclasses.asdict(self.state),
                 "total_steps": self.total, "dataset": self.info.dataset, **extra}
        return CheckpointMeta(self.info.vocab, self.info.index_fingerprint, self.info.role, extra={"train": train})

    def save_last(self) -> None:
        folder = os.path.join(self.out_dir, "last")
        staging = folder + ".partial"
        self.save_model(staging, self._meta())
        if getattr(self.cfg, "optimizer_state", True):  # off: weights only (a 3B model's AdamW state is 25 GB)
            tensors, steps = optimizer_tensors(self.opt, self.model)
            save_file(tensors, os.path.join(staging, "optim.safetensors"), metadata={"format": "pt"})
            _write_json(os.path.join(staging, "optim.json"), {"step": steps})
        _swap_in(staging, folder)
        self.saved_step = self.state.step
        _write_json(os.path.join(self.out_dir, "train_state.json"),
                    {**dataclasses.asdict(self.state), "seed": self.cfg.seed, "total_steps": self.total,
                     "metric": self.metric, "data_hash": self.info.data_hash})
        self.log({"event": "checkpoint", "step": self.state.step, "path": folder})

    def resume(self) -> None:
        """Continue from out_dir/last where it exists; refuse one saved under a different setup."""
        folder = last_folder(self.out_dir)
        if folder is None:
            return
        saved, meta = self.load_model(folder)
        check_fits(meta, self.info.vocab, self.info.index_fingerprint, folder)
        train = (meta.extra or {}).get("train", {})
        mine = self._identity()
        diff = sorted(k for k in mine if train.get(k) != mine[k])
        if saved.cfg != self.model.cfg or diff:
            what = diff or ["model config"]
            raise CheckpointError(f"{folder}: saved under a different {', '.join(what)}; "
                                  "use another out_dir or delete it to start over")
        if not os.path.isfile(os.path.join(folder, "optim.json")):
            raise CheckpointError(f"{folder}: saved without optimiser state (optimizer_state=False), so the run "
                                  "cannot resume; use another out_dir or delete it to start over")
        self.model.load_state_dict(saved.state_dict())
        with open(os.path.join(folder, "optim.json")) as f:
            steps = json.load(f)["step"]
        load_optimizer_tensors(self.opt, self.model, load_file(os.path.join(folder, "optim.safetensors")), steps)
        self.state = TrainState.from_dict(train["state"])
        self.saved_step = self.state.step
        self.log({"event": "resume", "step": self.state.step, "epoch": self.state.epoch, "path": folder})

    def checkpoint(self) -> str:
        """out_dir/best, or out_dir/last where no validation ran."""
        best = os.path.join(self.out_dir, "best")
        return best if os.path.isdir(best) else os.path.join(self.out_dir, "last")

    # --- validation -------------------------------------------------------------------------------
    def validate(self) -> None:
        """Log `evaluate`'s values; save out_dir/best when `metric` beats the best so far."""
        m = self.evaluate()
        self.validated_step = self.state.step
        if m is None:
            return
        value = m[self.metric]
        self.log({"event": "eval", "step": self.state.step, "epoch": self.state.epoch, **m})
        self.state.stale += 1
        if self.state.best is None or value > self.state.best:
            self.state.best, self.state.best_step, self.state.stale = value, self.state.step, 0
            folder = os.path.join(self.out_dir, "best")
            self.save_model(folder, self._meta(metrics=m))
            self.log({"event": "best", "step": self.state.step, self.metric: value, "path": folder})

    # --- the loop ---------------------------------------------------------------------------------
    def step(self, batch) -> torch.Tensor:
        """One optimiser step -> the batch loss (scalar tensor, no host sync)."""
        t = self.clock()
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.state.step, self.total, self.cfg)
        with step_context(self.amp, self.device):  # entered per step: see the module docstring
            loss, tokens = self.loss(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.state.step += 1
        self.tokens += tokens
        self.train_s += self.clock() - t  # exact on the CPU; on a GPU it lags by the queued work
        return loss.detach()

    def stop_reason(self) -> str | None:
        if self.state.step >= self.total:
            return "done"
        if self.cfg.max_steps and self.state.step >= self.cfg.max_steps:
            return "max_steps"
        patience = getattr(self.cfg, "patience", 0)
        if patience and self.state.stale >= patience:
            return "early_stop"
        limit = getattr(self.cfg, "time_limit_s", 0.0)
        if limit and self.clock() - self.t0 >= limit:
            return "time_limit"
        return None

    def run_epoch(self, bar: tqdm) -> str | None:
        """Steps to the end of the epoch or an earlier stop, validating on schedule -> stop reason."""
        loss_sum, n = torch.zeros((), device=self.device), 0
        for batch in self.epoch_batches(self.state.epoch)[self.state.step - self.state.epoch * self.per_epoch:]:
            loss_sum += self.step(batch)
            n += 1
            bar.update(1)
            end_of_epoch = self.state.step % self.per_epoch == 0
            if self.state.step % LOG_EVERY == 0 or end_of_epoch or self.state.step == self.total:
                self._log_train(bar, float(loss_sum) / n)  # host sync: once per LOG_EVERY steps
                loss_sum, n = torch.zeros((), device=self.device), 0
            if self.eval_every and self.state.step % self.eval_every == 0:
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

    def run(self, progress: bool, desc: str | None = None) -> str:
        if torch.is_autocast_enabled(self.device.type):
            raise RuntimeError("training inside a torch.autocast context: autocast would keep the first step's bf16 "
                               "weights for every step; set precision='bf16' instead (the loop enters autocast per step)")
        self.model.train()
        reason = self.stop_reason()
        with tqdm(total=self.total, initial=self.state.step, unit="step", desc=desc, disable=not progress) as bar:
            while reason is None:
                reason = self.run_epoch(bar)
                if self.state.step % self.per_epoch == 0 and self.state.step > self.state.epoch * self.per_epoch:
                    self.state.epoch += 1
                    if not self.eval_every:
                        self.validate()
                        self.save_last()
                        reason = reason or self.stop_reason()
        if reason in ("max_steps", "done") and self.validated_step != self.state.step:
            self.validate()  # the run's last model is validated (and kept as best/ if it is)
        if self.saved_step != self.state.step:
            self.save_last()
        return reason


def run_resumable(make: Callable[[], TrainLoop], threads: int, progress: bool,
                  desc: str | None = None) -> tuple[TrainLoop, str]:
    """Build a loop (with `threads` torch CPU threads, 0: torch's default), resume it from its
    out_dir/last where one exists, run it -> (the loop, its stop reason)."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        loop = make()
        loop.resume()
        return loop, loop.run(progress, desc)
    finally:
        torch.set_num_threads(before)
