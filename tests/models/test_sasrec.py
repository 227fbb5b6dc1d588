"""SASRec's structure: token layout, masks that never see padding, padding-invariant scores."""

from __future__ import annotations

import pytest
import torch

from recspec.models.sasrec import PAD, SASRec, SASRecConfig, attention_mask, to_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed: int = 0, **fields) -> SASRec:
    torch.manual_seed(seed)
    cfg = dict(num_items=20, hidden=16, layers=2, heads=2, max_len=8, dropout=0.2)
    cfg.update(fields)
    return SASRec(SASRecConfig(**cfg)).eval()


def test_tokens_shift_crop_and_left_pad():
    tok = to_tokens([[0, 1, 2], [5], list(range(10))], max_len=4)
    assert tok.tolist() == [[PAD, 1, 2, 3], [PAD, PAD, PAD, 6], [7, 8, 9, 10]]
    assert to_tokens([[]], max_len=4).tolist() == [[PAD]]


def test_mask_is_causal_skips_padding_keys_and_keeps_every_row():
    tok = torch.tensor([[PAD, PAD, 3, 4]])
    m = attention_mask(tok)[0, 0]  # (T, T)
    assert m.any(dim=1).all()  # no query without a key
    assert not m[2:, :2].any()  # real queries never see the padding
    assert m[3].tolist() == [False, False, True, True]
    assert not m.triu(1).any()  # never the future


def test_left_padding_does_not_change_scores():
    model = tiny()
    short = to_tokens([[4, 7, 1]], max_len=8)  # (1, 3)
    padded = torch.cat([torch.full((1, 5), PAD), short], dim=1)  # (1, 8)
    torch.testing.assert_close(model.scores(short), model.scores(padded))
    torch.testing.assert_close(model(short)[0], model(padded)[0, 5:])


def test_batched_histories_of_different_lengths_score_as_alone():
    model = tiny(seed=1)
    hists = [[3], [2, 9, 11, 5], [19, 0]]
    batch = model.scores(to_tokens(hists, 8))  # (3, I)
    for b, h in enumerate(hists):
        torch.testing.assert_close(batch[b], model.scores(to_tokens([h], 8))[0])


def test_scores_are_tied_to_the_item_embeddings_without_padding():
    model = tiny(num_items=11)
    tok = to_tokens([[1, 2]], 8)
    s = model.scores(tok)
    assert s.shape == (1, 11)
    torch.testing.assert_close(s, model(tok)[:, -1] @ model.item_emb.weight[1:].T)


def test_too_long_input_and_bad_heads_are_refused():
    model = tiny()
    with pytest.raises(ValueError, match="max_len"):
        model(torch.ones(1, 9, dtype=torch.int64))
    with pytest.raises(ValueError, match="divisible"):
        tiny(hidden=15, heads=2)
