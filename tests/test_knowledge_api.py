"""Knowledge generation (recspec/knowledge.py) on the tiny item corpus with a tiny LM trained a fixed number of
seeded steps: greedy texts drafted from every pool kind equal plain greedy decoding item by item; pools that
learned the texts save target calls; relaxed runs; the JSON-lines file resumes after a torn write and refuses
other settings."""

from __future__ import annotations

import json

import pytest

from item_corpus import write_item_json
from recspec.config import ModelConfig
from recspec.data.knowledge import encode_knowledge, load_knowledge_corpus, train_knowledge_tokenizer
from recspec.decoding.greedy import greedy_decode
from recspec.errors import DataError
from recspec.knowledge import (KnowledgeConfig, generate_file, make_generator, read_done, select_items,
                               until_eos)
from recspec.retrieval.groups import read_item_meta
from recspec.training.knowledge_lm import train_knowledge_lm
from recspec.training.text_lm import TextLMConfig

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_OUT = 24


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """(model, tokenizer, items, item meta, interactions) of a tiny LM trained 40 seeded steps."""
    root = tmp_path_factory.mktemp("knowledge_api")
    path = write_item_json(root / "data")
    corpus = load_knowledge_corpus(path.parent)
    tok = train_knowledge_tokenizer(corpus, vocab_size=400)
    items = encode_knowledge(corpus, tok, max_prompt=32, max_output=MAX_OUT)
    cfg = TextLMConfig(steps=40, batch_size=8, lr=1e-2, warmup_steps=5, max_len=64, precision="fp32")
    model, _ = train_knowledge_lm(items, tok, ModelConfig.preset(tok.vocab_size, "tiny", max_positions=64), cfg,
                                  root / "lm")
    interactions = {str(u): [(u * 7 + j * 3) % 40 for j in range(6)] for u in range(30)}
    return model.eval(), tok, items, read_item_meta(path), interactions, path.parent, root / "lm" / "last"


def reference(model, gen, ids):
    """Plain greedy decoding of `ids` under the generator's constraint -> {item: tokens before <eos>}."""
    out = greedy_decode(model, gen.constraint, gen.items.prompt_batch(ids))
    return {i: until_eos(out.codes[r, 0].tolist()) for r, i in enumerate(ids)}


@pytest.mark.parametrize("pool", ["none", "global", "category", "kmeans", "random"])
def test_greedy_knowledge_equals_plain_greedy(lm, pool):
    model, tok, items, meta, inter, _, _ = lm
    cfg = KnowledgeConfig(pool=pool, batch_size=5, width=3, depth=4, budget=12, max_output=MAX_OUT)
    gen = make_generator(model, tok, items, cfg, meta, inter)
    ids = select_items(items, "all")
    want = reference(model, gen, list(ids))
    got = {g.item: g for batch in gen.generate(ids) for g in batch}
    assert sorted(got) == sorted(ids)
    for i in ids:
        assert list(got[i].tokens) == want[i], f"item {i}"
        assert got[i].text == tok.decode(want[i]).strip()


def test_pools_that_learned_the_texts_save_target_calls(lm):
    model, tok, items, meta, inter, _, _ = lm
    cfg = KnowledgeConfig(pool="category", batch_size=8, width=3, depth=4, budget=12, max_output=MAX_OUT)
    gen = make_generator(model, tok, items, cfg, meta, inter, warm=())
    ids = list(items.ids)
    first = {g.item: g for b in gen.generate(ids) for g in b}  # online: the pools learn every batch
    second = {g.item: g for b in gen.generate(ids) for g in b}
    assert all(first[i].tokens == second[i].tokens for i in ids)
    assert sum(g.target_calls for g in second.values()) < sum(g.target_calls for g in first.values())


def test_relaxed_generates_every_item(lm):
    model, tok, items, meta, inter, _, _ = lm
    cfg = KnowledgeConfig(mode="relaxed", pool="global", batch_size=6, width=3, depth=4, budget=12,
                          max_output=MAX_OUT)
    gen = make_generator(model, tok, items, cfg, meta, inter)
    got = [g for b in gen.generate(items.ids) for g in b]
    assert sorted(g.item for g in got) == sorted(items.ids)
    assert all(len(g.tokens) < MAX_OUT + 1 and all(t > 2 for t in g.tokens) for g in got)  # no specials


def test_file_resumes_after_a_torn_line_and_refuses_other_settings(lm, tmp_path):
    model, tok, items, meta, inter, _, _ = lm
    cfg = KnowledgeConfig(pool="category", batch_size=4, width=3, depth=4, budget=12, max_output=MAX_OUT)
    ids = list(select_items(items, "all"))
    out = tmp_path / "k.jsonl"
    written, before = generate_file(make_generator(model, tok, items, cfg, meta, inter), ids[:10], out, cfg.settings())
    assert (written, before) == (10, 0)
    with open(out, "a") as f:
        f.write('{"item": 99, "te')  # an interrupted write
    progress = []
    written, before = generate_file(make_generator(model, tok, items, cfg, meta, inter), ids, out, cfg.settings(),
                                    lambda done, total: progress.append((done, total)))
    assert (written, before) == (len(ids) - 10, 10) and progress[-1] == (len(ids), len(ids))
    done = read_done(out)
    want = reference(model, make_generator(model, tok, items, cfg, meta, inter), ids)
    assert sorted(done) == sorted(ids) and all(list(done[i].tokens) == want[i] for i in ids)
    assert all(json.loads(line)["item"] in want for line in out.read_text().splitlines())
    other = KnowledgeConfig(pool="global", batch_size=4, width=3, depth=4, budget=12, max_output=MAX_OUT)
    with pytest.raises(DataError, match="written with pool='category', now pool='global'"):
        generate_file(make_generator(model, tok, items, other, meta, inter), ids, out, other.settings())


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="pool must be one of"):
        KnowledgeConfig(pool="users")
    with pytest.raises(ValueError, match="mode must be one of"):
        KnowledgeConfig(mode="sample")
    with pytest.raises(ValueError, match="pool_fraction"):
        KnowledgeConfig(pool_fraction=1.5)


def test_cli_generates_resumes_and_fails_in_one_line(lm, tmp_path, monkeypatch, capsys):
    """`recspec knowledge generate`: texts equal to plain greedy; a rerun adds nothing; --pool-from fills the pools
    with another run's texts; bad input is one line on stderr and exit code 2, and writes nothing."""
    from recspec import cli

    model, tok, items, meta, inter, data, ckpt = lm
    out, old = tmp_path / "new.jsonl", tmp_path / "old.jsonl"

    def run(*args):
        monkeypatch.setattr("sys.argv", ["recspec", "knowledge", "generate", str(data), "--model", str(ckpt),
                                         "--max-output", str(MAX_OUT), "--width", "3", "--depth", "4", *args])
        try:
            cli.main()
        except SystemExit as e:
            return e.code
        return 0

    assert run("--out", str(old), "--items", "old", "--pool", "none") == 0
    assert run("--out", str(out), "--items", "new", "--pool-from", str(old), "--batch-size", "3") == 0
    assert run("--out", str(out), "--items", "new", "--pool-from", str(old), "--batch-size", "3") == 0
    assert "0 texts written" in capsys.readouterr().out
    gen = make_generator(model, tok, items, KnowledgeConfig(max_output=MAX_OUT), meta, inter)
    new = list(select_items(items, "new"))
    want = reference(model, gen, new)
    done = read_done(out)
    assert sorted(done) == new and all(list(done[i].tokens) == want[i] for i in new)
    for args, message in ((["--pool", "users"], "'users' is not one of"),
                          (["--pool-from", str(tmp_path / "nope.jsonl")], "no such file"),
                          (["--pool-fraction", "2"], "pool_fraction must lie in [0, 1]")):
        assert run("--out", str(tmp_path / "bad.jsonl"), *args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
        assert not (tmp_path / "bad.jsonl").exists()


def test_cli_train_selects_on_old_items_and_reports_the_gate(lm, tmp_path, monkeypatch, capsys):
    """`recspec knowledge train`: a loadable model/ and gate.json with one row per KN order, one of them the order
    the old items' validation share chose; a bad size is one line and exit code 2."""
    from recspec import cli
    from recspec.training.text_lm import load_text_lm

    data = lm[5]
    argv = ["recspec", "knowledge", "train", str(data), "--out", str(tmp_path / "run"), "--size", "tiny",
            "--steps", "30", "--eval-every", "10", "--batch-size", "8", "--lr", "1e-2"]
    monkeypatch.setattr("sys.argv", argv)
    cli.main()
    capsys.readouterr()
    model, tok = load_text_lm(tmp_path / "run" / "model")
    rows = json.loads((tmp_path / "run" / "gate.json").read_text())["rows"]
    assert [r["ngram_order"] for r in rows] == [2, 3, 4, 5, 6] and sum(r["chosen_order"] for r in rows) == 1
    assert all(r["lm_ppl"] > 1 and r["passed"] == (r["lm_ppl"] < r["ngram_ppl"]) for r in rows)
    monkeypatch.setattr("sys.argv", argv[:-8] + ["--size", "huge"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "unknown model size 'huge'" in err
