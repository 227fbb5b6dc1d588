"""The knowledge task's texts and tokens (data/knowledge.py), on the tiny item.json written by the test; the
encoding checks also run on every Office item where the shared data are present."""

from __future__ import annotations

import json

import pytest

from item_corpus import write_item_json
from recspec.data.knowledge import (PROMPT_END, encode_knowledge, encode_output, encode_prompt, knowledge_text,
                                    load_knowledge_corpus, piece_ids, sequences, train_knowledge_tokenizer)
from recspec.data.text import FIELD_SEP, load_text_corpus, read_item_texts, train_tokenizer
from recspec.data.vocab import BOS, EOS, PAD
from recspec.errors import DataError

# descriptions whose first characters a tokenizer could join to the separator: punctuation, digits, a
# contraction, another separator, specials spelled out, non-ASCII
ODD = ["'s the best", "| not a field", "...and more", "123 sheets", "<eos> is text", "日本語 😀", "-", "&amp; co"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(item.json folder, corpus, tokenizer, items) of the tiny corpus with ODD descriptions added."""
    root = tmp_path_factory.mktemp("knowledge")
    path = write_item_json(root / "plain")
    raw = json.loads(path.read_text())
    for k, d in enumerate(ODD):
        raw[str(100 + k)] = {"title": f"odd item {k}!", "categories": "Odd, Things?", "description": d}
    folder = write_item_json(root / "odd", raw).parent
    corpus = load_knowledge_corpus(folder)
    tok = train_knowledge_tokenizer(corpus, vocab_size=400)
    return folder, corpus, tok, encode_knowledge(corpus, tok, max_prompt=10_000, max_output=10_000)


def test_texts_are_the_text_paths_fields(tiny):
    folder, corpus, _, _ = tiny
    texts = read_item_texts(folder)
    assert list(texts) == list(corpus.ids)
    for i, p, d in zip(corpus.ids, corpus.prompts, corpus.descriptions):
        assert knowledge_text(p, d) == texts[i]  # prompt | description is the item's text
    row = corpus.ids.index(1)
    assert corpus.prompts[row] == FIELD_SEP.join(["blue stapler 2-pack", "Paperline", "Office Products, Staplers"])
    assert corpus.descriptions[row] == "A red stapler for the office & home. Refill 1."
    assert corpus.descriptions[corpus.ids.index(0)] == ""  # every 4th description is empty
    assert corpus.categories[row] == "Office Products, Staplers"


def test_split_and_tokenizer_are_the_text_paths(tiny):
    folder, corpus, tok, _ = tiny
    text = load_text_corpus(folder)
    assert corpus.split == text.split
    assert tok.fingerprint() == train_tokenizer(text, vocab_size=400).fingerprint()


def test_prompt_then_output_is_the_items_text_token_for_token(tiny):
    _, corpus, tok, items = tiny
    assert items.ids == corpus.ids
    checked = 0
    for p, o, prompt, d in zip(items.prompts, items.outputs, corpus.prompts, corpus.descriptions):
        assert p[0] == BOS and list(p[1:]) == piece_ids(tok, prompt + PROMPT_END)
        assert BOS not in p[1:] and EOS not in p
        if d:
            assert o[-1] == EOS and EOS not in o[:-1]
            assert list(p[1:] + o[:-1]) == piece_ids(tok, knowledge_text(prompt, d))
            assert tok.decode(p + o) == knowledge_text(prompt, d)
            checked += 1
        else:
            assert o == ()
    assert checked == sum(bool(d) for d in corpus.descriptions) >= 30 + len(ODD)


def test_long_prompts_keep_the_separator_and_long_outputs_lose_eos(tiny):
    _, corpus, tok, items = tiny
    end = piece_ids(tok, PROMPT_END)
    prompt = corpus.prompts[0]
    full = encode_prompt(tok, prompt, 10_000)
    cut = encode_prompt(tok, prompt, len(end) + 3)
    assert len(full) > len(cut) == len(end) + 3
    assert cut == full[:3] + end
    assert encode_prompt(tok, prompt, len(full)) == full
    d = corpus.descriptions[1]
    out = encode_output(tok, d, 10_000)
    assert encode_output(tok, d, 4) == out[:4] and EOS not in out[:4]
    assert encode_output(tok, d, len(out)) == out and encode_output(tok, "", 4) == []
    with pytest.raises(ValueError, match="max_prompt"):
        encode_prompt(tok, prompt, 2)


def test_scored_items_are_those_with_a_description(tiny):
    _, corpus, _, items = tiny
    scored = items.scored(items.split.old)
    assert set(scored) == {i for i in items.split.old if corpus.descriptions[corpus.ids.index(i)]}
    assert 0 < len(scored) < len(items.split.old)
    rows, starts = sequences(items.pairs(scored[:2]))
    for r, s, (p, o) in zip(rows, starts, items.pairs(scored[:2])):
        assert r == list(p) + list(o) and s == len(p)
    with pytest.raises(DataError, match="item 9999: not among"):
        items.row(9999)


def test_prompt_batch_is_left_padded_for_generation(tiny):
    _, _, _, items = tiny
    ids = items.split.new[:3]
    batch = items.prompt_batch(ids)
    T = batch.tokens.shape[1]
    for row, n, (p, _) in zip(batch.tokens.tolist(), batch.lengths.tolist(), items.pairs(ids)):
        assert n == len(p) and row[T - n:] == list(p) and row[:T - n] == [PAD] * (T - n)
    with pytest.raises(DataError, match="no items"):
        items.prompt_batch([])


def test_an_item_without_prompt_fields_is_a_one_line_error(tmp_path):
    path = write_item_json(tmp_path, {"0": {"title": "a"}, "3": {"title": " ", "description": "only this"}})
    with pytest.raises(DataError, match=r"item 3: no prompt text \(title, brand, categories all empty\)") as e:
        load_knowledge_corpus(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="item 0: field 'brand' is a int"):
        load_knowledge_corpus(write_item_json(tmp_path / "b", {"0": {"title": "a", "brand": 3}}))


def test_office_encoding_holds_on_every_item(optional_shared_datasets):
    if optional_shared_datasets is None or not (optional_shared_datasets / "office").is_dir():
        pytest.skip("shared Office data not present")
    corpus = load_knowledge_corpus(optional_shared_datasets / "office")
    assert len(corpus.ids) == 2420 and sum(bool(d) for d in corpus.descriptions) == 1781
    tok = train_knowledge_tokenizer(corpus)
    for prompt, d in zip(corpus.prompts, corpus.descriptions):
        if d:
            whole = piece_ids(tok, knowledge_text(prompt, d))
            assert piece_ids(tok, prompt + PROMPT_END) + piece_ids(tok, " " + d) == whole
    items = encode_knowledge(corpus, tok)
    assert len(items.scored(items.split.new)) == 337


def test_validation_split_divides_the_old_scored_items_and_leaves_the_new_alone(tiny):
    _, _, _, items = tiny
    old = items.scored(items.split.old)
    v = items.validation_split(0.25)
    assert sorted(v.old + v.new) == sorted(old) and not set(v.old) & set(v.new)
    assert not set(v.old + v.new) & set(items.split.new)
    assert len(v.new) == len(old) - round(0.75 * len(old))
    assert items.validation_split(0.25) == v  # sha256 order: no generator state
    assert items.validation_split(0.25, seed=2) != v or len(old) < 3
    with pytest.raises(ValueError, match="fraction"):
        items.validation_split(1.0)
    with pytest.raises(DataError, match="too few"):
        items.validation_split(0.001)
