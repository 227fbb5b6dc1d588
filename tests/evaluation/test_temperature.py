"""Temperature (evaluation/temperature.py): folding divides a Decoder's logits exactly, and on a model built by
hand (right on half the tokens, confidently wrong on the rest: an interior optimum by construction) the fitted T
is the NLL's minimum and scales with the logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from recspec.config import ModelConfig
from recspec.evaluation.temperature import fit_temperature, fold_temperature
from recspec.evaluation.text_gate import lm_nll
from recspec.models.decoder import Decoder

from test_text_gate import V, _items


class HandMade(nn.Module):
    """logits(token t) = g * Z[t]: 4 on the rule's next token (t + 1, mod 9 past the specials) for even t, on
    a wrong one (t + 2) for odd t. g is `model.norm.weight` as in a Decoder, so folding applies to it."""

    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.norm = nn.Module()
        self.model.norm.weight = nn.Parameter(torch.ones(V))
        Z = torch.zeros(V, V)
        for t in range(3, 12):
            Z[t, 3 + (t - 3 + (1 if t % 2 == 0 else 2)) % 9] = 4.0
        self.register_buffer("Z", Z)

    def hidden(self, tokens, positions):
        return F.one_hot(tokens, V).float() * self.model.norm.weight  # (B, T, V)

    def head(self, hidden):
        return hidden @ self.Z  # (B, T, V)


def test_fold_divides_a_decoders_logits_exactly():
    torch.manual_seed(0)
    model = Decoder(ModelConfig.preset(V, "tiny", max_positions=16, tie_embeddings=True)).eval()
    tokens, pos = torch.tensor([[1, 4, 5, 6]]), torch.arange(4)[None]
    before = model.head(model.hidden(tokens, pos))
    after = fold_temperature(model, 2.5).head(model.hidden(tokens, pos))
    torch.testing.assert_close(after, before / 2.5)
    with pytest.raises(ValueError, match="temperature"):
        fold_temperature(model, 0.0)


def test_fitted_temperature_is_the_minimum_and_scales_with_the_logits():
    items, model = _items(), HandMade()
    ids = items.split.old
    t = fit_temperature(model, items, ids)
    assert 0.5 < t < 5.0  # interior, not an end of the search interval
    nll = lambda s: float(lm_nll(fold_temperature(HandMade(), s), items, ids).nll.sum())
    assert nll(t) <= min(nll(t * 0.9), nll(t * 1.1), nll(1.0))
    sharper = fold_temperature(HandMade(), 0.5)  # logits doubled: the fitted T doubles
    assert fit_temperature(sharper, items, ids) == pytest.approx(2 * t, rel=1e-4)
