"""Item text corpus, old/new split, BPE tokenizer and text prompts (data/text.py), on a tiny item.json built
in the test (conftest.write_item_json); one test reads the shared Office items where they are present."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from item_corpus import write_item_json
from recspec.data.sids import SIDIndex
from recspec.data.text import (FIELD_SEP, TextTokenizer, default_vocab_size, load_text_corpus, normalise_text,
                               read_item_texts, split_items, text_prompts, train_tokenizer)
from recspec.data.vocab import BOS, EOS, PAD, Vocab, build_prompts
from recspec.errors import CheckpointError, DataError

ODD = ["Héllo  wörld™ 日本語 😀", "literal <eos> and <bos> and <pad>", "AT&amp;T\tphone\n\nline  2", "x"]


def test_item_text_joins_non_empty_fields_in_order_normalised(text_items):
    texts = read_item_texts(text_items)
    assert list(texts) == list(range(40))
    assert texts[0] == FIELD_SEP.join(["black pen 1-pack", "Acme", "Office Products, Pens"])  # empty description out
    assert texts[1] == FIELD_SEP.join(["blue stapler 2-pack", "Paperline", "Office Products, Staplers",
                                       "A red stapler for the office & home. Refill 1."])  # &amp; unescaped
    assert read_item_texts(text_items / "Tiny.item.json") == texts  # the file itself works too
    assert normalise_text("  a\n\tb&amp;c ") == "a b&c"


@pytest.mark.parametrize("items, expected", [
    ({"0": {"title": "a"}, "7": {"title": " ", "description": "", "brand": "", "categories": ""}}, "item 7: no text"),
    ({"0": {"title": 3}}, "item 0: field 'title' is a int"),
    ({"x1": {"title": "a"}}, "item id 'x1' is not a non-negative integer"),
    ({"0": "a"}, "item 0: expected an object"),
])
def test_bad_items_are_one_line_errors_naming_the_item(tmp_path, items, expected):
    path = write_item_json(tmp_path, items)
    with pytest.raises(DataError, match=expected) as e:
        read_item_texts(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_or_ambiguous_input_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        read_item_texts(tmp_path / "nope.item.json")
    with pytest.raises(DataError, match=r"expected one \*\.item\.json file, found no file"):
        read_item_texts(tmp_path)


def test_split_is_deterministic_disjoint_and_sized_by_the_fraction():
    ids = range(1000)
    a, b = split_items(ids, 0.8, seed=0), split_items(reversed(ids), 0.8, seed=0)
    assert a == b and len(a.old) == 800 and len(a.new) == 200
    assert not set(a.old) & set(a.new) and set(a.old) | set(a.new) == set(ids)
    assert list(a.old) == sorted(a.old) and list(a.new) == sorted(a.new)
    assert split_items(ids, 0.8, seed=1) != a  # the seed draws another split
    assert a.old != tuple(range(800))  # not an id-order cut
    assert len(split_items(ids, 0.5).old) == 500
    with pytest.raises(ValueError):
        split_items(ids, 0.0)


@pytest.fixture
def corpus(text_items):
    return load_text_corpus(text_items)


@pytest.fixture
def tokenizer(corpus):
    return train_tokenizer(corpus, vocab_size=400)


def test_special_ids_are_the_vocab_constants(tokenizer):
    assert [tokenizer.tok.token_to_id(s) for s in ("<pad>", "<bos>", "<eos>")] == [PAD, BOS, EOS] == [0, 1, 2]
    assert 259 < tokenizer.vocab_size <= 400  # specials + bytes + merges, capped by the request


def test_decode_of_encode_is_the_normalised_text(corpus, tokenizer):
    for text in corpus.old_texts() + corpus.new_texts() + ODD:
        ids = tokenizer.encode(text, max_len=10_000)
        assert ids[0] == BOS and ids[-1] == EOS and PAD not in ids
        assert BOS not in ids[1:-1] and EOS not in ids[1:-1]  # "<eos>" in a text is text
        assert tokenizer.decode(ids) == normalise_text(text)


def test_truncated_text_keeps_its_first_tokens_and_gets_no_eos(corpus, tokenizer):
    text = corpus.old_texts()[1]
    full = tokenizer.encode(text, max_len=10_000)
    cut = tokenizer.encode(text, max_len=5)
    assert len(full) > 5 and cut == full[:5] and EOS not in cut
    assert tokenizer.encode(text, max_len=len(full)) == full


def test_save_load_round_trip(tmp_path, corpus, tokenizer):
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = TextTokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.fingerprint() == tokenizer.fingerprint()
    for text in corpus.new_texts() + ODD:
        assert loaded.encode(text) == tokenizer.encode(text)


def test_bad_tokenizer_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer file not found"):
        TextTokenizer.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CheckpointError, match="bad.json: not a tokenizers tokenizer.json"):
        TextTokenizer.load(tmp_path / "bad.json")


def _with_text(folder, item: int, title: str):
    raw = json.loads((folder / "Tiny.item.json").read_text())
    raw[str(item)] = {"title": title}
    return write_item_json(folder.parent / f"edit{item}", raw)


def test_tokenizer_is_a_function_of_the_old_items_only(text_items, corpus, tokenizer):
    new, old = corpus.split.new[0], corpus.split.old[0]
    unseen = "zyzzyva zyzzyva quokka quokka quokka"
    edited = load_text_corpus(_with_text(text_items, new, unseen))
    assert edited.split == corpus.split  # the split depends on the ids only
    assert train_tokenizer(edited, 400).fingerprint() == tokenizer.fingerprint()
    retrained = train_tokenizer(load_text_corpus(_with_text(text_items, old, unseen)), 400)
    assert retrained.fingerprint() != tokenizer.fingerprint()  # the same edit on an old item is seen
    assert train_tokenizer(corpus, 400).fingerprint() == tokenizer.fingerprint()  # training is deterministic


def test_default_vocab_size_grows_with_distinct_words_up_to_the_cap():
    assert default_vocab_size(["a b c d"]) == 3 + 256 + 2
    assert default_vocab_size([" ".join(f"w{i}" for i in range(10_000))]) == 1024


def test_prompts_are_left_padded_like_build_prompts(corpus, tokenizer):
    encoded = tokenizer.encode_many(corpus.old_texts()[:4] + ["x"], max_len=12)
    tp = text_prompts(encoded, n=6)
    index = SIDIndex(codes=np.array([[0, 1], [1, 0]]), level_sizes=(2, 2), prefixes=("a", "b"))
    reference = build_prompts(Vocab.for_index(index), index, [[0], [0, 1]])
    for p in (tp.prompts, reference):  # every row ends at the last column, PAD before it
        T = p.tokens.shape[1]
        for row, n in zip(p.tokens, p.lengths.tolist()):
            assert (row[: T - n] == PAD).all() and (row[T - n:] != PAD).all() and row[T - n] == BOS
    assert tp.prompts.lengths.tolist() == [6, 6, 6, 6, 2]  # "x": <bos> x <eos>, cut to leave one token
    for row, n, rest, full in zip(tp.prompts.tokens, tp.prompts.lengths.tolist(), tp.rest, encoded):
        assert row[-n:].tolist() + list(rest) == full
    assert tp.prompts.tokens.dtype == torch.int64
    with pytest.raises(DataError, match="encoded item 1"):
        text_prompts([[BOS, 5], [BOS]], n=3)


def test_office_items(optional_shared_datasets):
    if optional_shared_datasets is None or not (optional_shared_datasets / "office").is_dir():
        pytest.skip("shared Office data not present")
    corpus = load_text_corpus(optional_shared_datasets / "office")
    assert len(corpus.texts) == 2420 and all(corpus.texts.values())
    assert (len(corpus.split.old), len(corpus.split.new)) == (1936, 484)
    assert corpus.texts[2].startswith("AT&T 210 Corded Phone")
