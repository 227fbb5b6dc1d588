"""The text LM (training/text_lm.py): a tiny model on a tiny item corpus built in the test, a fixed
number of seeded steps; it learns, it is reproducible, and its checkpoint carries its tokenizer."""

from __future__ import annotations

import pytest
import torch

from recspec.config import ModelConfig
from item_corpus import write_item_json
from recspec.data.text import load_text_corpus, train_tokenizer
from recspec.data.vocab import BOS, EOS, PAD
from recspec.errors import CheckpointError
from recspec.training.text_lm import TextLMConfig, load_text_lm, save_tokenizer, text_windows, train_text_lm
from recspec.training.windows import IGNORE

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = TextLMConfig(steps=40, batch_size=8, lr=1e-2, warmup_steps=5, max_len=48, precision="fp32")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two runs of the same seeded setup in two folders: (corpus, tokenizer, [(model, result, out_dir)] * 2)."""
    root = tmp_path_factory.mktemp("text_lm")
    corpus = load_text_corpus(write_item_json(root / "data"))
    tokenizer = train_tokenizer(corpus, vocab_size=400)
    runs = []
    for name in ("a", "b"):
        model_cfg = ModelConfig.preset(tokenizer.vocab_size, "tiny", max_positions=CFG.max_len)
        model, result = train_text_lm(corpus, tokenizer, model_cfg, CFG, root / name)
        runs.append((model, result, root / name))
    return corpus, tokenizer, runs


def test_windows_label_every_next_token_and_pad_the_right():
    w = text_windows([[BOS, 5, 6, EOS], [BOS, 7]])
    assert w.tokens.tolist() == [[BOS, 5, 6, EOS], [BOS, 7, PAD, PAD]]
    assert w.labels.tolist() == [[5, 6, EOS, IGNORE], [7, IGNORE, IGNORE, IGNORE]]
    assert w.lengths.tolist() == [4, 2]


def test_loss_falls_clearly_on_old_and_new_items(trained):
    _, tokenizer, [(_, r, _), _] = trained
    assert r.steps == CFG.steps
    assert abs(r.train_loss_before - torch.log(torch.tensor(float(tokenizer.vocab_size)))) < 0.5  # ~uniform at init
    assert r.train_loss < r.train_loss_before - 2.0
    assert r.heldout_loss < r.heldout_loss_before - 1.5  # new items share the old ones' words


def test_same_seed_same_weights(trained):
    _, _, [(a, ra, _), (b, rb, _)] = trained
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert (ra.train_loss, ra.heldout_loss) == (rb.train_loss, rb.heldout_loss)


def test_checkpoint_loads_with_its_tokenizer(trained):
    corpus, tokenizer, [(model, result, out), _] = trained
    assert sorted(p.name for p in out.iterdir()) >= ["best", "last", "tokenizer.json"]
    loaded, tok = load_text_lm(result.checkpoint)
    assert tok.fingerprint() == tokenizer.fingerprint()
    tokens = torch.tensor([tok.encode(corpus.new_texts()[0], CFG.max_len)])
    assert torch.allclose(loaded.forward_train(tokens), model.forward_train(tokens), atol=1e-6)


def test_another_tokenizer_is_refused(trained, tmp_path):
    corpus, _, [(_, result, out), _] = trained
    other = train_tokenizer(corpus, vocab_size=300)
    with pytest.raises(CheckpointError, match="a different tokenizer"):
        save_tokenizer(other, str(out))
    (tmp_path / "last").symlink_to(out / "last", target_is_directory=True)
    other.save(tmp_path / "tokenizer.json")
    with pytest.raises(CheckpointError, match="trained with another tokenizer"):
        load_text_lm(tmp_path / "last")
