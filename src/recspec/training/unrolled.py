"""Unrolled drafter training (spec listwise-and-pad.md sections 2(b), 3): a drafter learns from the frozen
target's own features and distributions over the training sequences, at every draft depth it will draft at.

Data: the users' training sequences cut into windows (windows.py), `<bos> item <eos> item <eos> ...`; each
batch is run through the target (no grad) for its features f (B, T, C) (final hidden states) and logits.

feature-head (models/heads.py). Pair i (i = 0..T-2) is token x_{i+1} at position i + 1 with the feature
before it; it predicts f_{i+1} and, through the target's LM head, x_{i+2}. Pass 0 reads the real features
f_i; pass k = 1..unroll reads pass k - 1's predictions (as HASS / EAGLE-3 train), with step index k, so the
head sees what it sees at tree depth k. Pass k's pair i attends to what it would while drafting
(`unroll_mask`): pass 0's pairs up to i - k (committed tokens with real features), then the chain of its
predicted ancestors, pass j's pair i - k + j for j = 1..k. Loss: the mean over passes of
`losses.feature_head_loss` (feature_weight * SmoothL1 + ce_weight * soft CE) at the real pairs each pass has.

draft-unrolled (a draft `Decoder`, with a PAD module or not). A token drafter has no features to drift: on
an accepted path its drafted tokens are the target's, so depth changes only the step indices its keys and
values were written with. Each window is cut (`round_steps`) into a prompt (step 0) and simulated rounds: a
pending token (step 0) then up to `unroll` drafted ones (steps 1, 2, ...), as the draft-model drafter feeds
them. Loss: soft CE to the target's next-token distribution at every real position.

Optimiser, schedule, checkpoints (last/, safetensors + json) and exact resume are the shared loop's
(loop.py); every run takes exactly cfg.steps seeded steps, and nothing is validated (evaluate: None).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from recspec.config import ModelConfig, UnrollConfig
from recspec.data.datasets import SplitData
from recspec.data.sids import SIDIndex
from recspec.data.vocab import Vocab
from recspec.errors import DataError
from recspec.models.decoder import Decoder
from recspec.models.heads import FeatureHead, head_config, load_head, save_head
from recspec.models.hf import CheckpointMeta
from recspec.training import losses
from recspec.training.loop import RunInfo, run_resumable
from recspec.training.train import WindowLoop, data_hash
from recspec.training.windows import build_windows


class StepKV:
    """Keys/values of every pass so far, one block of n pairs per pass, appended without in-place ops so
    autograd goes through them (duck-types `KVCache.write` / `.k` / `.v`; the slots are implied: pass p's
    pair q is key p * n + q)."""

    def __init__(self, num_layers: int):
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers

    def write(self, layer: int, slots, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v (B, Hkv, n, D): this pass's pairs, after the earlier passes'."""
        old_k, old_v = self.k[layer], self.v[layer]
        self.k[layer] = k if old_k is None else torch.cat([old_k, k], dim=2)
        self.v[layer] = v if old_v is None else torch.cat([old_v, v], dim=2)


def unroll_mask(n: int, k: int, device=None) -> torch.Tensor:
    """(n, (k + 1) * n) bool: what pass k's pair i attends to among the pairs of passes 0..k: pass 0's pairs
    0..i - k, then pass j's pair i - k + j for j = 1..k (its predicted ancestors, itself last). Pass 0 is
    causal. Rows i < k have no such chain and see only themselves (they carry no loss)."""
    i = torch.arange(n, device=device)[:, None]
    col = torch.arange((k + 1) * n, device=device)[None]
    p, q = col // n, col % n  # pass and pair of each key
    chain = (p >= 1) & (q == i - k + p) & (i >= k)
    return ((p == 0) & (q <= i - k)) | chain | ((p == k) & (q == i))


def target_outputs(target: Decoder, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, T) right-padded -> the target's features (B, T, C) and logits (B, T, V), causal, no grad."""
    pos = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    with torch.no_grad():
        f = target.hidden(tokens, pos)
        return f, target.head(f)


def unrolled_features(head: FeatureHead, target: Decoder, tokens: torch.Tensor, feats: torch.Tensor,
                      unroll: int) -> list[torch.Tensor]:
    """tokens (B, T) and the target's features (B, T, C) -> the head's predictions (B, T - 1, C) of passes
    0..unroll: pass k's pair i feeds token i + 1 (at position i + 1) with pass k - 1's prediction at pair
    i - 1 (pass 0: the target's f_i), with step index k, attending as `unroll_mask` says."""
    B, T = tokens.shape
    n = T - 1
    x = tokens[:, 1:]  # (B, n)
    pos = torch.arange(1, T, device=tokens.device).expand(B, n)
    inputs, kv, preds = feats[:, :-1], StepKV(head.cfg.num_layers), []
    for k in range(unroll + 1):
        mask = unroll_mask(n, k, tokens.device)[None]  # (1, n, (k + 1) n)
        preds.append(head.features(target, x, inputs, pos, mask, kv, None, torch.full_like(x, k)))  # (B, n, C)
        inputs = torch.cat([feats[:, :1], preds[-1][:, :-1]], dim=1)  # pair i of pass k + 1 reads pair i - 1's
    return preds


def feature_head_batch(head: FeatureHead, target: Decoder, tokens: torch.Tensor, lengths: torch.Tensor,
                       cfg: UnrollConfig, step: int) -> torch.Tensor:
    """tokens (B, T), lengths (B,) -> the mean over passes 0..cfg.unroll of the feature-head loss (scalar)."""
    f, z = target_outputs(target, tokens)  # (B, T, C), (B, T, V)
    n = tokens.shape[1] - 1
    i = torch.arange(n, device=tokens.device)
    real = (i + 1)[None] < lengths[:, None]  # (B, n) pairs whose token is real
    out = []
    for k, pred in enumerate(unrolled_features(head, target, tokens, f, cfg.unroll)):
        live = real & (i >= k)  # pairs with k predicted ancestors
        out.append(losses.feature_head_loss(pred, f[:, 1:], target.head(pred), z[:, 1:], live,
                                            cfg.feature_weight, cfg.ce_weight))
    return torch.stack(out).mean()


def round_steps(lengths: torch.Tensor, T: int, k_max: int, rng: np.random.Generator) -> torch.Tensor:
    """(B, T) int64 step indices of simulated decoding: up to a random cut the prompt (0), then rounds of
    1..k_max + 1 tokens, each a pending token (0) and the tokens drafted after it (1, 2, ...)."""
    steps = np.zeros((len(lengths), T), dtype=np.int64)
    for b, n in enumerate(lengths.tolist()):
        t = int(rng.integers(0, max(n, 1)))
        while t < T:
            r = int(rng.integers(1, k_max + 2))
            steps[b, t:t + r] = np.arange(r)[:T - t]
            t += r
    return torch.from_numpy(steps)


def draft_unrolled_batch(draft: Decoder, target: Decoder, tokens: torch.Tensor, lengths: torch.Tensor,
                         cfg: UnrollConfig, step: int) -> torch.Tensor:
    """tokens (B, T), lengths (B,) -> soft CE of the draft, fed simulated rounds' step indices, to the target."""
    _, z = target_outputs(target, tokens)  # (B, T, V)
    B, T = tokens.shape
    steps = round_steps(lengths, T, cfg.unroll, np.random.default_rng([cfg.seed, step])).to(tokens.device)
    pos = torch.arange(T, device=tokens.device).expand(B, T)
    logits = draft.head(draft.hidden(tokens, pos, steps=steps))  # (B, T, V)
    return losses.soft_ce(logits, z, pos < lengths[:, None])


BatchLoss = Callable[[torch.nn.Module, Decoder, torch.Tensor, torch.Tensor, UnrollConfig, int], torch.Tensor]
BATCH_LOSSES: dict[str, BatchLoss] = {"feature-head": feature_head_batch, "draft-unrolled": draft_unrolled_batch}


# --- the drafters -----------------------------------------------------------------------------------------
def new_drafter(target: Decoder, vocab: Vocab, cfg: UnrollConfig, size: str = "draft") -> FeatureHead | Decoder:
    """A fresh drafter for cfg.objective, initialised from cfg.seed (torch's global RNG untouched): a feature
    head of the target's shape, or a draft decoder of preset `size`; with the PAD module cfg's switches ask for."""
    pad = cfg.pad(vocab.level_sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = NEW_DRAFTERS[cfg.objective](target, vocab, pad, size)
    return model.to(next(target.parameters()).device)


NEW_DRAFTERS = {"feature-head": lambda target, vocab, pad, size: FeatureHead(head_config(target.cfg, pad)),
                "draft-unrolled": lambda target, vocab, pad, size: Decoder(ModelConfig.preset(vocab.size, size, pad=pad))}


class _Unrolled(WindowLoop):
    """Windows of the training sequences, the objective's batch loss, no validation."""

    metric = "none"

    def __init__(self, model, target: Decoder, data: SplitData, index: SIDIndex, vocab: Vocab, cfg: UnrollConfig,
                 out_dir: str, on_log: Callable[[dict], None]):
        self.target, self.batch_loss = target, BATCH_LOSSES[cfg.objective]
        self.windows = build_windows(data.fit_sequences("valid"), vocab, index, cfg.window_items, cfg.window_stride)
        if not len(self.windows):
            raise DataError(f"{data.name}: no training windows (every training sequence has fewer than 2 items)")
        role = "feature-head" if isinstance(model, FeatureHead) else "draft"
        info = RunInfo(vocab, index.fingerprint(), role, data.name, data_hash(self.windows))
        per_epoch = -(-len(self.windows) // cfg.batch_size)
        super().__init__(model, cfg, out_dir, info, per_epoch, on_log)

    def loss(self, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        tokens, _ = (x.to(self.device) for x in self.windows.batch(rows))
        lengths = self.windows.lengths[rows].to(self.device)
        loss = self.batch_loss(self.model, self.target, tokens, lengths, self.cfg, self.state.step)
        return loss, int(lengths.sum())

    def evaluate(self) -> dict | None:
        return None

    def save_model(self, folder: str, meta: CheckpointMeta) -> None:
        if isinstance(self.model, FeatureHead):
            save_head(self.model, meta, folder)
        else:
            super().save_model(folder, meta)

    def load_model(self, folder: str):
        return load_head(folder) if isinstance(self.model, FeatureHead) else super().load_model(folder)


@dataclass(frozen=True)
class UnrollResult:
    objective: str
    steps: int  # optimiser steps done, resumed ones included
    checkpoint: str  # out_dir/last: the drafter (a feature head folder, or a draft checkpoint)
    stop_reason: str  # "done" or "max_steps"
    seconds: float  # wall time of this call
    tokens_per_s: float  # window tokens per second of optimiser steps


def train_unrolled(model: FeatureHead | Decoder, target: Decoder, data: SplitData, index: SIDIndex, vocab: Vocab,
                   cfg: UnrollConfig, out_dir: str | os.PathLike, on_log: Callable[[dict], None] | None = None,
                   progress: bool = True) -> UnrollResult:
    """Train `model` (`new_drafter`) in place with cfg.objective against the frozen `target` on data's training
    sequences (resuming from out_dir/last where it exists). The target's parameters are frozen for the run."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    thawed = [p for p in target.parameters() if p.requires_grad]
    for p in thawed:
        p.requires_grad_(False)  # the head's gradients pass through the target's LM head, never into it
    was_training = target.training
    target.eval()
    try:
        loop, reason = run_resumable(lambda: _Unrolled(model, target, data, index, vocab, cfg, out_dir,
                                                       on_log or (lambda _: None)), cfg.threads, progress, cfg.objective)
    finally:
        for p in thawed:
            p.requires_grad_(True)
        target.train(was_training)
    model.eval()
    return UnrollResult(objective=cfg.objective, steps=loop.state.step, checkpoint=loop.checkpoint(),
                        stop_reason=reason, seconds=time.perf_counter() - loop.t0,
                        tokens_per_s=loop.tokens / max(loop.train_s, 1e-9))
