"""The downstream check of generated knowledge (LASER's protocol): a small CTR model whose item features
are item-text embeddings, trained on one catalogue's interactions, scored by AUC and LogLoss. Knowledge
that keeps the recommender as good ("lossless" in the paper's sense) keeps the AUC; `knowledge_check`
compares two knowledge sets on the same seeds.

Data: `ctr_data.build_ctr_examples` (leave-one-out positives, sampled negatives). Model, for a candidate
item i and a user's history h_1..h_m (m <= L):
    x_i = [E_id[i] ; W T[i]]             (2D,)  E_id (I, D) learned, T (I, d_t) frozen text embeddings,
                                                W (D, d_t) learned; no text: the W T[i] half is 0
    u   = (1/m) sum_j x_{h_j}            (2D,)  the user: mean of the history's item vectors
    logit(u, i) = MLP([u ; x_i ; u * x_i]) + b_i,   p = sigmoid(logit)
trained with binary cross-entropy for `epochs` passes over the train examples in a seeded order.
One seed fixes the negatives (`ctr_data`), the initial weights and the batch order, and the parameters
every arm shares (E_id, b, MLP) are created first, so two arms of one seed differ only in the text.
Everything runs on the CPU; nothing reads the clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recspec.evaluation.ctr_data import CTRExamples, build_ctr_examples

LOGLOSS_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] in LogLoss


# --- metrics (pure) -------------------------------------------------------------------------------
def tie_groups(scores: np.ndarray) -> tuple[np.ndarray, int]:
    """scores (N,) -> (group (N,) int64, G): g_n = the rank of score n among the G distinct scores (0 lowest)."""
    uniq, group = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)
    return group.astype(np.int64), int(uniq.size)


def grouped_auc(group: np.ndarray, n_groups: int, labels: np.ndarray, weights: np.ndarray) -> float:
    """AUC of `tie_groups`' output with per-example weights w (N,):
        AUC = sum_{n: y_n=1} w_n [W_neg(g < g_n) + 0.5 W_neg(g = g_n)] / (W_pos * W_neg)
    W_neg(.) the summed weight of negatives in those groups, W_pos / W_neg the total weights."""
    y = np.asarray(labels, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    w_pos = np.bincount(group, weights=w * y, minlength=n_groups)  # (G,)
    w_neg = np.bincount(group, weights=w * (1.0 - y), minlength=n_groups)  # (G,)
    total_pos, total_neg = w_pos.sum(), w_neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        raise ValueError("AUC needs at least one positive and one negative (of positive weight)")
    below = np.cumsum(w_neg) - w_neg  # (G,) negative weight strictly below each group
    return float((w_pos * (below + 0.5 * w_neg)).sum() / (total_pos * total_neg))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve, the Mann-Whitney form with ties counted half:
        AUC = (1 / (|P| |N|)) sum_{i in P} sum_{j in N} ( [s_i > s_j] + 0.5 [s_i = s_j] )
            = (sum_{i in P} r_i - |P| (|P| + 1) / 2) / (|P| |N|),   r_i the mid-rank of s_i among all scores.
    scores (N,) any real scores (only their order matters), labels (N,) 1 positive / 0 negative."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be 1-d of one length, got {scores.shape} and {labels.shape}")
    group, n_groups = tie_groups(scores)
    return grouped_auc(group, n_groups, labels, np.ones(scores.shape[0]))


def logloss(probs: np.ndarray, labels: np.ndarray) -> float:
    """LogLoss = -(1/N) sum_n [y_n ln p_n + (1 - y_n) ln(1 - p_n)], p clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)).mean())


# --- config and result ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CTRConfig:
    history_len: int = 20  # L, most recent history items the user vector averages
    train_negatives: int = 4  # sampled negatives per train positive
    eval_negatives: int = 4  # per valid / test positive; equal to train's keeps LogLoss calibrated
    dim: int = 32  # D, width of the id embedding and of the text projection (item vector is 2D)
    hidden: int = 64  # MLP hidden width
    epochs: int = 6  # passes over the train examples (Office, seed 0: valid AUC peaks at 6 of 1..16)
    batch_size: int = 1024  # examples per optimiser step
    lr: float = 2e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam's L2 penalty
    init_std: float = 0.05  # std of the id embeddings' normal init


@dataclass(frozen=True)
class CTRResult:
    auc: float  # test AUC over every test example pooled
    logloss: float  # test LogLoss
    valid_auc: float  # the same AUC on the valid examples (reported, never used to stop)
    scores: np.ndarray  # (N,) float64 predicted click probability of each test example
    labels: np.ndarray  # (N,) float32 1 positive / 0 sampled negative
    users: np.ndarray  # (N,) int64 user row of each test example (for intervals over users)


# --- model ----------------------------------------------------------------------------------------
class CTRModel(nn.Module):
    """logit(u, i) = MLP([u ; x_i ; u * x_i]) + b_i (see the module docstring)."""

    def __init__(self, num_items: int, text_emb: torch.Tensor | None, cfg: CTRConfig):
        super().__init__()
        D = cfg.dim
        self.item_id = nn.Embedding(num_items, D)  # E_id (I, D)
        nn.init.normal_(self.item_id.weight, std=cfg.init_std)
        self.item_bias = nn.Parameter(torch.zeros(num_items))  # b (I,)
        self.mlp = nn.Sequential(nn.Linear(6 * D, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 1))
        self.register_buffer("text", text_emb)  # T (I, d_t) frozen, or None
        self.text_proj = nn.Linear(text_emb.shape[1], D, bias=False) if text_emb is not None else None

    def item_table(self) -> torch.Tensor:
        """(I, 2D) every item's x_i = [E_id[i] ; W T[i]], the text half 0 without text. Projecting the
        table once per step costs I * d_t * D, less than projecting the B * (L + 1) gathered rows."""
        ids = self.item_id.weight  # (I, D)
        if self.text_proj is None:
            return torch.cat([ids, torch.zeros_like(ids)], dim=-1)
        return torch.cat([ids, self.text_proj(self.text)], dim=-1)

    def forward(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """history (B, L) with PAD < 0, items (B,) -> logits (B,)."""
        table = self.item_table()  # (I, 2D)
        mask = (history >= 0).unsqueeze(-1).float()  # (B, L, 1)
        hv = table[history.clamp(min=0)] * mask  # (B, L, 2D)
        u = hv.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B, 2D)
        x = table[items]  # (B, 2D)
        return self.mlp(torch.cat([u, x, u * x], dim=-1)).squeeze(-1) + self.item_bias[items]


def build_model(num_items: int, text_emb: np.ndarray | None, cfg: CTRConfig, seed: int) -> CTRModel:
    """A CTRModel initialised from `seed` alone (the global RNG is restored afterwards)."""
    text = None if text_emb is None else torch.as_tensor(np.asarray(text_emb, dtype=np.float32))
    if text is not None and (text.ndim != 2 or text.shape[0] != num_items):
        raise ValueError(f"item_text_emb must be (I={num_items}, d), got {tuple(text.shape)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CTRModel(num_items, text, cfg)


# --- training and scoring -------------------------------------------------------------------------
def _tensors(ex: CTRExamples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CTRExamples -> (history (N, L), items (N,), labels (N,)) tensors."""
    return torch.from_numpy(ex.history), torch.from_numpy(ex.items), torch.from_numpy(ex.labels)


def train_ctr(model: CTRModel, train: CTRExamples, cfg: CTRConfig, seed: int) -> list[float]:
    """`cfg.epochs` passes of Adam on mean BCE, batches in a seeded order -> per-epoch mean train loss."""
    history, items, labels = _tensors(train)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(train), generator=gen)  # (N,)
        total = torch.zeros(())
        for start in range(0, len(train), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]  # (B,)
            loss = nn.functional.binary_cross_entropy_with_logits(model(history[idx], items[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * idx.shape[0]
        losses.append(float(total) / len(train))
    return losses


@torch.no_grad()
def predict(model: CTRModel, ex: CTRExamples, batch_size: int = 8192) -> np.ndarray:
    """CTRExamples (N rows) -> (N,) float64 click probabilities."""
    model.eval()
    history, items, _ = _tensors(ex)
    out = [torch.sigmoid(model(history[s:s + batch_size], items[s:s + batch_size]))
           for s in range(0, len(ex), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def num_items_of(interactions: Mapping[str, Sequence[int]], item_text_emb: np.ndarray | None) -> int:
    """I: the text matrix's rows where given, else 1 + the largest item id."""
    if item_text_emb is not None:
        return int(np.asarray(item_text_emb).shape[0])
    return 1 + max((int(i) for s in interactions.values() for i in s), default=-1)


def run_ctr(interactions: Mapping[str, Sequence[int]], item_text_emb: np.ndarray | None, cfg: CTRConfig,
            seed: int, num_items: int | None = None) -> CTRResult:
    """{user: items in time order}, item_text_emb (I, d_t) or None (no text) -> the test AUC / LogLoss of
    a CTR model trained from `seed`. num_items None: `num_items_of`; arms compared on one seed must
    share it (it fixes the negatives)."""
    I = num_items if num_items is not None else num_items_of(interactions, item_text_emb)
    negatives = {"train": cfg.train_negatives, "valid": cfg.eval_negatives, "test": cfg.eval_negatives}
    data = build_ctr_examples(interactions, I, cfg.history_len, negatives, seed)
    model = build_model(I, item_text_emb, cfg, seed)
    train_ctr(model, data["train"], cfg, seed)
    test, valid = data["test"], data["valid"]
    p = predict(model, test)  # (N,)
    return CTRResult(auc=auc(p, test.labels), logloss=logloss(p, test.labels),
                     valid_auc=auc(predict(model, valid), valid.labels),
                     scores=p, labels=test.labels, users=test.users)
