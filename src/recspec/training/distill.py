"""Draft alignment training (AtSpeed, spec section 5): a draft decoder learns from the target's teacher data.

A TeacherBatch holds M = 1 + K' paths per example: path 0 the ground-truth item, paths 1..K' the
target's top-K' beams, each L codes + `<eos>`, with the target's level-masked log p at every position.
The student runs on the paths an objective reads, all in ONE forward over [prompt | paths] with
tree attention (`decoding.path_tree.path_logits`, which carries gradients), and every loss is a pure function
of the logits (losses.py):

    objective  student paths   loss                                              best/ picked by
    ce         path 0          CE(ground truth)                                  strict acceptance
    wordkd     path 0          mix(CE, forward KL(p || q) on path 0)             strict acceptance
    tvd        path 0          mix(CE, TVD(p, q) on path 0)                      relaxed acceptance
    seqkd      all             mix(CE, CE on the teacher's beam tokens)          strict acceptance
    atspeed-s  all             mix(CE, reverse KL on the student's top-K         strict acceptance
                                   + density, along the teacher's beams)
    atspeed-r  all             mix(CE, TVD(p, q) along the teacher's beams)      relaxed acceptance

with mix(CE, A) = (1 - alpha) * CE + alpha * A and CE always on path 0. Beam positions weigh 1, a
beam the target could not fill (score -inf) 0. Per-level masks are TeacherBatch.masks.

Validation is on acceptance, not loss: at every validation the draft drafts for the target with
strict and with relaxed speculative beam search (N = draft_beams, gamma, K = eval_K) on the first
eval_users validation users, recording for each mode the accepted levels per round, the target
calls per user and Recall@K. `best/` keeps the draft with the most accepted levels per round under
the verification the objective serves: relaxed for tvd and atspeed-r (they minimise the TVD, and a
relaxed round accepts a drafted token with probability 1 - TVD), strict for the others.

Optimiser, schedule, checkpoints (best/, last/, train_state.json, safetensors only) and exact resume
are the shared loop's (loop.py). Batches of epoch e come from `TeacherData.epoch_plan(seed, e)`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Sequence

import torch

from recspec.config import OBJECTIVE_NAMES, DistillConfig
from recspec.data.catalog import Catalog
from recspec.data.datasets import Example
from recspec.decoding.engine import build_engine
from recspec.decoding.path_tree import path_logits
from recspec.errors import DataError
from recspec.evaluation.evaluate import decode_users, target_sids
from recspec.evaluation.metrics import ranking_metrics
from recspec.models.decoder import Decoder
from recspec.training import losses
from recspec.training.loop import RunInfo, TrainLoop, run_resumable
from recspec.training.teacher import TeacherBatch, TeacherData, fingerprint

AlignLoss = Callable[[torch.Tensor, TeacherBatch, DistillConfig], torch.Tensor]


# --- objectives: which paths, which loss -------------------------------------------------------
def beam_weights(batch: TeacherBatch) -> torch.Tensor:
    """(B, K', L + 1) float: 1 at every position of a real teacher beam, 0 on beams scored -inf."""
    L1 = batch.tokens.shape[-1]
    return torch.isfinite(batch.beam_score)[..., None].expand(-1, -1, L1).float()


def _word_kd(s, b: TeacherBatch, cfg) -> torch.Tensor:  # s (B, 1, L + 1, V): path 0
    return losses.word_kd(s[:, 0], b.teacher_logp[:, 0], b.masks)


def _tvd_kd(s, b: TeacherBatch, cfg) -> torch.Tensor:
    return losses.tvd_kd(s[:, 0], b.teacher_logp[:, 0], b.masks)


def _seq_kd(s, b: TeacherBatch, cfg) -> torch.Tensor:  # s (B, M, L + 1, V): every path
    return losses.seq_kd(s[:, 1:], b.tokens[:, 1:], b.masks, beam_weights(b))


def _atspeed_s(s, b: TeacherBatch, cfg) -> torch.Tensor:
    return losses.atspeed_s(s[:, 1:], b.teacher_logp[:, 1:], b.masks, beam_weights(b), K=cfg.K, beta=cfg.beta)


def _atspeed_r(s, b: TeacherBatch, cfg) -> torch.Tensor:
    return losses.atspeed_r(s[:, 1:], b.teacher_logp[:, 1:], b.masks, beam_weights(b))


@dataclass(frozen=True)
class Objective:
    gt_only: bool  # the loss reads path 0 only: the student runs on the ground truth alone
    align: AlignLoss | None  # alignment loss mixed with CE; None: CE alone
    verify: str  # verification whose acceptance picks best/: "strict" or "relaxed"


OBJECTIVES: dict[str, Objective] = {
    "ce": Objective(True, None, "strict"),
    "wordkd": Objective(True, _word_kd, "strict"),
    "tvd": Objective(True, _tvd_kd, "relaxed"),
    "seqkd": Objective(False, _seq_kd, "strict"),
    "atspeed-s": Objective(False, _atspeed_s, "strict"),
    "atspeed-r": Objective(False, _atspeed_r, "relaxed"),
}
assert tuple(OBJECTIVES) == OBJECTIVE_NAMES  # config.py validates names against this list


def objective_loss(student_logits: torch.Tensor, batch: TeacherBatch, cfg: DistillConfig) -> torch.Tensor:
    """student_logits (B, M', L + 1, V) along batch.paths[:, :M'] (M' = 1 or M) -> scalar
    (1 - alpha) * CE(path 0) + alpha * the objective's alignment loss (CE alone for "ce")."""
    obj = OBJECTIVES[cfg.objective]
    gt_ce = losses.ce(student_logits[:, 0], batch.tokens[:, 0], batch.masks)
    return gt_ce if obj.align is None else losses.mix(gt_ce, obj.align(student_logits, batch, cfg), cfg.alpha)


def student_logits(model: Decoder, batch: TeacherBatch, gt_only: bool) -> torch.Tensor:
    """The student's logits along path 0 (gt_only) or every path: (B, M', L + 1, V), with grad."""
    paths = batch.paths[:, :1] if gt_only else batch.paths  # (B, M', L)
    return path_logits(model, batch.prompts, paths)


# --- validation: acceptance of the draft by the target --------------------------------------------
@torch.no_grad()
def acceptance(target: Decoder, draft: Decoder, catalog: Catalog, examples: Sequence[Example],
               cfg: DistillConfig) -> dict[str, float | int]:
    """Strict and relaxed speculative beam search of `target` drafted by `draft` on `examples` ->
    {"<mode>_accepted_levels": levels accepted per round (mean over users' rounds),
     "<mode>_target_calls": target forward passes per user, "<mode>_recall@K"} for mode strict /
    relaxed, and "users". The draft is put in eval mode for the run and back after."""
    dc = cfg.eval_decode.replace(batch_size=cfg.batch_size, seed=cfg.seed)
    K, t = dc.K, dc.tree
    if t.draft_beams is not None and t.draft_beams < K:
        dc = dc.replace(draft_beams=K)  # a tree level holds the K beams
    was_training = draft.training
    out: dict[str, float | int] = {"users": len(examples)}
    histories, truth = [e.history for e in examples], target_sids(catalog.trie, examples)
    draft.eval()
    try:
        for verify in ("strict", "relaxed"):
            engine = build_engine(target, catalog.trie, dc.replace(verify=verify), draft, catalog.popularity)
            res, stats = decode_users(engine, catalog, histories, dc.batch_size)
            m = {**ranking_metrics(res.sids.tolist(), truth, [K]), **stats.summary()}
            out.update({f"{verify}_accepted_levels": m["accepted_levels"],
                        f"{verify}_target_calls": m["target_calls"], f"{verify}_recall@{K}": m[f"recall@{K}"]})
    finally:
        draft.train(was_training)
    return out


# --- the run ----------------------------------------------------------------------------------------
def check_teacher(teacher: TeacherData, target: Decoder, catalog: Catalog) -> None:
    """Refuse teacher data made for another SID vocabulary / index or by another target."""
    teacher.check_fits(catalog.vocab, catalog.index.fingerprint())
    if fingerprint(*target.state_dict().values()) != teacher.manifest["target_fingerprint"]:
        raise DataError(f"{teacher.folder}: teacher data was made by another target model")


def teacher_hash(teacher: TeacherData) -> str:
    """Identifies the teacher data (its examples, target, index and format): a resumed run must see the same."""
    m = teacher.manifest
    return fingerprint([m[k] for k in ("data_fingerprint", "target_fingerprint", "index_fingerprint",
                                       "K_prime", "keep", "num_examples", "shard_size")])


class _Distiller(TrainLoop):
    """Teacher batches, the objective's loss, validation on acceptance."""

    def __init__(self, draft: Decoder, target: Decoder, teacher: TeacherData, catalog: Catalog,
                 cfg: DistillConfig, out_dir: str, on_log: Callable[[dict], None]):
        self.target, self.teacher, self.catalog = target, teacher, catalog
        self.objective = OBJECTIVES[cfg.objective]
        self.metric = f"{self.objective.verify}_accepted_levels"
        info = RunInfo(catalog.vocab, catalog.index.fingerprint(), "draft", catalog.data.name, teacher_hash(teacher))
        super().__init__(draft, cfg, out_dir, info, len(teacher.epoch_plan(cfg.batch_size, cfg.seed, 0)), on_log)

    def epoch_batches(self, epoch: int) -> list[tuple[int, torch.Tensor]]:
        return self.teacher.epoch_plan(self.cfg.batch_size, self.cfg.seed, epoch)

    def loss(self, plan: tuple[int, torch.Tensor]) -> tuple[torch.Tensor, int]:
        batch = self.teacher.load_batch(*plan, device=self.device)
        logits = student_logits(self.model, batch, self.objective.gt_only)  # (B, M', L + 1, V)
        tokens = int(batch.prompts.lengths.sum()) + logits.shape[0] * logits.shape[1] * (logits.shape[2] - 1)
        return objective_loss(logits, batch, self.cfg), tokens

    def evaluate(self) -> dict | None:
        examples = self.catalog.data.valid[: self.cfg.eval_users]
        if not examples:
            return None
        return acceptance(self.target, self.model, self.catalog, examples, self.cfg)


@dataclass(frozen=True)
class DistillResult:
    objective: str
    steps: int  # optimiser steps done, resumed ones included
    epochs_done: int  # complete passes over the teacher examples
    metric: str  # what picked best/: "strict_accepted_levels" or "relaxed_accepted_levels"
    best: float  # its best validation value (NaN: never validated)
    best_step: int | None  # step of that validation
    seconds: float  # wall time of this call
    checkpoint: str  # out_dir/best, or out_dir/last where no validation ran
    stop_reason: str  # "done", "max_steps", "early_stop" or "time_limit"
    tokens_per_s: float  # student tokens (prompt + path tokens) per second of optimiser steps


def distill(draft: Decoder, target: Decoder, teacher: TeacherData, catalog: Catalog, cfg: DistillConfig,
            out_dir: str | os.PathLike, on_log: Callable[[dict], None] | None = None,
            progress: bool = True) -> DistillResult:
    """Train `draft` in place on `teacher` with cfg.objective (resuming from out_dir/last where it
    exists; a finished run returns at once). `target` (eval mode, on the draft's device) made the
    teacher data and verifies the drafts at validation."""
    check_teacher(teacher, target, catalog)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    loop, reason = run_resumable(lambda: _Distiller(draft, target, teacher, catalog, cfg, out_dir,
                                                    on_log or (lambda _: None)),
                                 cfg.threads, progress, desc=cfg.objective)
    best = loop.state.best
    return DistillResult(objective=cfg.objective, steps=loop.state.step, epochs_done=loop.state.step // loop.per_epoch,
                         metric=loop.metric, best=float("nan") if best is None else best,
                         best_step=loop.state.best_step, seconds=time.perf_counter() - loop.t0,
                         checkpoint=loop.checkpoint(), stop_reason=reason,
                         tokens_per_s=loop.tokens / max(loop.train_s, 1e-9))
