"""The PAD module and the feature head: the slot function on hand-built cases, PAD at init is the identity
(every variant, on a draft decoder and on a feature head), it does act once trained, and both checkpoint
formats round-trip without pickle."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from recspec.config import ModelConfig, PADConfig
from recspec.data.vocab import BOS, EOS, PAD, Vocab
from recspec.errors import CheckpointError
from recspec.models.decoder import Decoder
from recspec.models.heads import FeatureHead, head_config, is_head, load_head, save_head
from recspec.models.hf import CheckpointMeta, load_checkpoint, save_checkpoint
from recspec.models.pad import PADModule, next_slot_table

VOCAB = Vocab(level_sizes=(4, 3, 5), prefixes=("a", "b", "c"))  # tokens: 3 specials, a 3..6, b 7..9, c 10..14
SHAPE = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)
VARIANTS = {"slot": dict(slot=True, step=False), "step": dict(slot=False, step=True),
            "no-gate": dict(slot=True, step=True, gate=False), "full": dict(slot=True, step=True, gate=True)}


def pad_cfg(variant: str, k_max: int = 3) -> PADConfig:
    return PADConfig(VOCAB.level_sizes, k_max=k_max, **VARIANTS[variant])


def sequence(gen: torch.Generator, n: int = 3) -> torch.Tensor:
    """<bos> then n items (a b c codes) each ended by <eos>: (1, 1 + 4 n)."""
    toks = [BOS]
    for _ in range(n):
        toks += [3 + int(torch.randint(4, (1,), generator=gen)), 7 + int(torch.randint(3, (1,), generator=gen)),
                 10 + int(torch.randint(5, (1,), generator=gen)), EOS]
    return torch.tensor([toks])


def test_next_slot_follows_the_item_layout():
    """After <bos> or <eos> a new item starts (level 0); after a level-l code comes level l + 1, after the last
    level the item's <eos> (slot L = 3); after <pad> or a token outside the SID vocabulary, L + 1."""
    table = next_slot_table(VOCAB.level_sizes, VOCAB.size + 2)  # two tokens past the SID vocabulary
    assert table[BOS] == 0 and table[EOS] == 0 and table[PAD] == 4
    assert table[3:7].tolist() == [1] * 4 and table[7:10].tolist() == [2] * 3 and table[10:15].tolist() == [3] * 5
    assert table[15:].tolist() == [4, 4]
    seq = [BOS, 4, 8, 12, EOS, 3]
    assert table[seq].tolist() == [0, 1, 2, 3, 0, 1]  # each entry: the slot of the next token of seq


@pytest.mark.parametrize("variant", VARIANTS)
def test_pad_at_init_is_the_identity(variant):
    """On a draft decoder (same seed with and without PAD: same weights) and on a feature head (PAD added
    to a trained-looking head), at any step index: outputs equal to float tolerance."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.cat([sequence(gen), sequence(gen)])  # (2, 13)
    steps = torch.randint(0, 6, tokens.shape, generator=gen)  # past k_max too (clipped)
    cfg = ModelConfig(vocab_size=VOCAB.size, **SHAPE)
    torch.manual_seed(1)
    base = Decoder(cfg).eval()
    torch.manual_seed(1)
    with_pad = Decoder(dataclasses.replace(cfg, pad=pad_cfg(variant))).eval()
    pos = torch.arange(tokens.shape[1]).expand_as(tokens)
    with torch.no_grad():
        torch.testing.assert_close(with_pad.hidden(tokens, pos, steps=steps), base.hidden(tokens, pos), atol=1e-6, rtol=0)
    head = FeatureHead(head_config(cfg)).eval()
    padded = FeatureHead(head_config(cfg, pad_cfg(variant))).eval()
    padded.load_state_dict(head.state_dict(), strict=False)  # the head's weights, the PAD module's own
    feats = torch.randn(*tokens.shape, cfg.hidden_size, generator=gen)
    with torch.no_grad():
        want = head(base, tokens, feats, pos)
        got = padded(base, tokens, feats, pos, steps=steps)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def test_pad_acts_by_slot_and_step_once_its_parameters_move():
    """alpha, E_step and the gate away from init: the same token at another step index, or the same
    embedding at another slot, gives another h; without the gate the step term is the plain sum."""
    pad = PADModule(pad_cfg("full"), 8, VOCAB.size)
    with torch.no_grad():
        pad.alpha.fill_(1.0)
        pad.E_step.weight.normal_()
    h = torch.zeros(1, 2, 8)
    same_tok = torch.tensor([[4, 4]])
    out = pad(h, same_tok, torch.tensor([[0, 2]]))
    assert not torch.allclose(out[0, 0], out[0, 1])
    g = torch.sigmoid(torch.tensor(-2.0))  # W_g = 0: the gate is sigmoid(b_g)
    want = pad.E_item.weight[1] + g * pad.E_step.weight[2]
    torch.testing.assert_close(out[0, 1], want)
    ungated = PADModule(pad_cfg("no-gate"), 8, VOCAB.size)
    ungated.load_state_dict({k: v for k, v in pad.state_dict().items() if not k.startswith("gate")})
    torch.testing.assert_close(ungated(h, same_tok, torch.tensor([[0, 9]]))[0, 1],
                               pad.E_item.weight[1] + pad.E_step.weight[3])  # step 9 clipped at k_max = 3


def test_feature_head_reads_the_target_and_its_frozen_lm_head():
    """logits = the target's LM head on the predicted feature; the head owns no target weight."""
    cfg = ModelConfig(vocab_size=VOCAB.size, **SHAPE)
    target = Decoder(cfg).eval()
    head = FeatureHead(head_config(cfg)).eval()
    assert not any(k.startswith(("lm_head", "model.")) for k in head.state_dict())
    tokens = sequence(torch.Generator().manual_seed(3))
    pos = torch.arange(tokens.shape[1])[None]
    feats = target.hidden(tokens, pos)
    logits, f = head(target, tokens, feats, pos)
    torch.testing.assert_close(logits, target.lm_head(f))
    with pytest.raises(CheckpointError, match="does not fit a target"):
        head.check_fits(Decoder(ModelConfig(vocab_size=VOCAB.size, hidden_size=16, num_heads=2, num_kv_heads=1)))


def test_checkpoints_round_trip(tmp_path):
    """A PAD draft decoder (config.json's recspec_pad) and a PAD feature head (head.json) load back equal;
    a decoder checkpoint is no head folder."""
    meta = CheckpointMeta(VOCAB, "fp")
    cfg = ModelConfig(vocab_size=VOCAB.size, pad=pad_cfg("full"), **SHAPE)
    draft = Decoder(cfg)
    with torch.no_grad():
        draft.pad.alpha.fill_(0.5)
    save_checkpoint(draft, meta, tmp_path / "draft")
    back, _ = load_checkpoint(tmp_path / "draft")
    assert back.cfg == cfg and not is_head(tmp_path / "draft")
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), draft.state_dict().values()))
    head = FeatureHead(head_config(dataclasses.replace(cfg, pad=None), pad_cfg("step")))
    save_head(head, meta, tmp_path / "head")
    loaded, hmeta = load_head(tmp_path / "head")
    assert loaded.cfg == head.cfg and hmeta.role == "feature-head" and hmeta.vocab == VOCAB
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), head.state_dict().values()))
    with pytest.raises(CheckpointError, match="not a feature head folder"):
        load_head(tmp_path / "draft")
