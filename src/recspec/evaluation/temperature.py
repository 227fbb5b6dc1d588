"""Temperature of a text LM, fitted on held-out text and folded into its weights.

A model trained for many epochs on a small corpus is overconfident: its held-out NLL falls when its logits z
are divided by a temperature T > 1. Terms: beta = 1 / T; for scored tokens t = 1..n with targets y_t,
    NLL(beta) = - sum_t log softmax(beta z_t)[y_t]
which is convex in beta (a log-sum-exp minus a linear term), so a golden-section search on [BETA_LO, BETA_HI]
finds its minimum; a fixed number of iterations, no tolerance test, so the result is a function of the data.

Folding: the logits are lm_head(g * x / rms(x)) with g the final RMSNorm's weight, linear in g, so g <- beta g
divides every logit by T exactly (tied embeddings included: the embedding is not touched). The checkpoint
format is unchanged and `load_text_lm` loads the calibrated model as any other.

Fit T on items the model is not scored on (the old items' validation split), never on the gate's items.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from recspec.data.knowledge import KnowledgeItems
from recspec.evaluation.text_gate import scored_ids, scored_logits
from recspec.models.decoder import Decoder

BETA_LO, BETA_HI = 0.2, 2.0  # search interval of 1 / T
ITERATIONS = 40  # golden-section steps: the interval shrinks by 0.618 ** 40 (~4e-9)


@torch.no_grad()
def fit_temperature(model: Decoder, items: KnowledgeItems, ids: Iterable[int], batch_size: int = 32) -> float:
    """T minimising the summed NLL of the output tokens of `ids` (module docstring); the model in eval mode."""
    was_training = model.training
    model.eval()
    pairs = items.pairs(scored_ids(items, ids))
    parts = [scored_logits(model, pairs[s:s + batch_size]) for s in range(0, len(pairs), batch_size)]
    model.train(was_training)
    logits = torch.cat([p[0] for p in parts]).double()  # (n, V) float64: the NLL is flat at its minimum
    target = torch.cat([p[1] for p in parts])  # (n,)
    nll = lambda beta: float(F.cross_entropy(logits * beta, target, reduction="sum"))  # host sync: fitting only
    lo, hi, g = BETA_LO, BETA_HI, (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(ITERATIONS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return 1.0 / ((lo + hi) / 2)


@torch.no_grad()
def fold_temperature(model: Decoder, temperature: float) -> Decoder:
    """Divide every logit of `model` by `temperature`, in place (the final norm's weight, module docstring)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    model.model.norm.weight.mul_(1.0 / temperature)
    return model
