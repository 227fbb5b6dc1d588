"""List-wise generation at the user-facing edge: `Recommender.recommend_list` / `evaluate_list` and
`recspec recommend --listwise M` / `recspec eval --listwise M`, on a 30-item catalogue written at test time
with tiny random (seeded) models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from recspec import cli
from recspec.config import DecodeConfig, TreeConfig
from recspec.data.catalog import open_catalog
from recspec.data.sids import SIDIndex
from recspec.data.vocab import Vocab, build_prompts
from recspec.decoding.constraints import ItemList
from recspec.decoding.greedy import greedy_decode
from recspec.models.hf import CheckpointMeta, save_checkpoint
from recspec.recommender import Recommender

NUM_ITEMS = 30  # 5 x 6 codes over 2 SID levels
USERS = 12
M = 8  # items per list: a quarter of the catalogue, so the no-repeat rule is exercised

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def write_data(folder: Path) -> None:
    """sequential_{train,valid,test}.txt for USERS users (1-based ids, histories of 1 to 7 items) and the index."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(4)
    for split, n in (("train", (1, 8)), ("valid", (1, 2)), ("test", (1, 2))):
        lines = [" ".join([str(u)] + [str(int(i)) for i in rng.integers(1, NUM_ITEMS + 1, int(rng.integers(*n)))])
                 for u in range(1, USERS + 1)]
        (folder / f"sequential_{split}.txt").write_text("\n".join(lines) + "\n")
    codes = np.stack([np.arange(NUM_ITEMS) // 6, np.arange(NUM_ITEMS) % 6], axis=1)
    SIDIndex(codes=codes, level_sizes=(5, 6), prefixes=("a", "b")).save(folder / "toy.index.json")


@pytest.fixture(scope="module")
def toy(tmp_path_factory, make_decoder):
    """The data folder, a random target checkpoint and a random draft checkpoint for it."""
    root = tmp_path_factory.mktemp("listwise")
    write_data(root / "data")
    index = SIDIndex.load(root / "data" / "toy.index.json")
    vocab = Vocab.for_index(index)
    save_checkpoint(make_decoder(vocab, seed=3, num_layers=2), CheckpointMeta(vocab, index.fingerprint()), root / "target")
    save_checkpoint(make_decoder(vocab, seed=4, hidden_size=16), CheckpointMeta(vocab, index.fingerprint()), root / "draft")
    return root


def histories(toy) -> list[list[int]]:
    """Every user's train-period items as internal ids (lengths 1 to 7: batches of mixed prompt lengths)."""
    return open_catalog(str(toy / "data")).data.train


def recommender(toy, draft: bool = False, **cfg) -> Recommender:
    tree = TreeConfig(draft_beams=4, gamma=3) if draft else TreeConfig()
    return Recommender.load(str(toy / "data"), str(toy / "target"), str(toy / "draft") if draft else None,
                            DecodeConfig(batch_size=5, tree=tree, **cfg))


# --- the Python API --------------------------------------------------------------------------------------
def test_api_lists_are_the_targets_greedy_lists(toy):
    """recommend_list (batches of 5 users sorted by length, ids as the files write them) returns, user by user,
    the items of greedy_decode on that user alone, in generated order."""
    rec = recommender(toy)
    hist = histories(toy)
    got, _ = rec.recommend_list([[i + 1 for i in h] for h in hist], M)
    c = ItemList(rec.catalog.trie, M)
    want = [greedy_decode(rec.target, c, build_prompts(rec.catalog.vocab, rec.catalog.index, [h])).sids[0, 0] for h in hist]
    assert got.items == [[i + 1 for i in rec.catalog.trie.items(w).tolist()] for w in want]


def test_spec_with_a_draft_equals_plain_greedy_user_by_user(toy):
    hist = histories(toy)
    plain, _ = recommender(toy).recommend_list_internal(hist, M)
    spec, _ = recommender(toy, draft=True).recommend_list_internal(hist, M)
    same = (spec.codes == plain.codes).all(dim=-1)[:, 0]  # (U,) every token of the user's list
    assert same.all(), f"users {(~same).nonzero().flatten().tolist()} differ from plain greedy"


def test_exclude_history_keeps_every_history_item_out_of_the_list(toy):
    rec = recommender(toy, exclude_history=True)
    hist = histories(toy)
    lists, _ = rec.recommend_list_internal(hist, M)
    items = rec.catalog.trie.items(lists.sids[:, 0]).tolist()
    assert all(not set(row) & set(h) for row, h in zip(items, hist))


def test_evaluate_list_scores_the_lists_it_returns(toy):
    """The greedy-list row's Recall@M is the share of users whose test item is in their list."""
    rec = recommender(toy)
    test = list(rec.catalog.data.test)
    lists, _ = rec.recommend_list_internal([e.history for e in test], M)
    items = rec.catalog.trie.items(lists.sids[:, 0]).tolist()
    hit = np.mean([len(set(row) & set(e.targets)) / len(set(e.targets)) for row, e in zip(items, test)])
    greedy = rec.evaluate_list(test, M)[0]
    assert greedy["recall@8"] == pytest.approx(hit, abs=1e-6)


# --- the command line ------------------------------------------------------------------------------------
def run(*args, stdin: str = ""):
    return CliRunner().invoke(cli.app, [str(a) for a in args], input=stdin)


HISTORIES = "".join(json.dumps({"history": h}) + "\n" for h in ([1, 2, 3], [4], [5, 9, 12, 20], [30, 1]))


def test_recommend_listwise_writes_m_distinct_items_per_user(toy):
    res = run("recommend", toy / "data", "--model", toy / "target", "--listwise", M, stdin=HISTORIES)
    assert res.exit_code == 0, res.output
    lists = [[r["item"] for r in json.loads(line)["recommendations"]] for line in res.stdout.splitlines()]
    assert len(lists) == 4 and all(len(set(items)) == M for items in lists)


@pytest.mark.parametrize("flags,words", [
    (["--listwise", "0"], "'--listwise': must be >= 1, got 0"),
    (["--listwise", "-3"], "'--listwise': must be >= 1, got -3"),
    (["--listwise", "x"], "'--listwise'"),
    (["--listwise", str(NUM_ITEMS + 1)], f"--listwise {NUM_ITEMS + 1}: above the {NUM_ITEMS} distinct items"),
    (["--listwise", "4", "--eos"], "--eos scores <eos> after one item's codes"),
    (["--listwise", "4", "--draft", "trie", "--draft-beams", "4"], "--listwise with --draft trie"),
    (["--listwise", "4", "--draft", "DRAFT"], "--listwise with --draft: give the tree's shape"),
])
def test_a_bad_listwise_is_one_line_exit_2_naming_the_flag(toy, monkeypatch, capsys, flags, words):
    import io

    flags = [str(toy / "draft") if f == "DRAFT" else f for f in flags]
    monkeypatch.setattr("sys.stdin", io.StringIO(HISTORIES))
    with pytest.raises(SystemExit) as e:
        cli.main(["recommend", str(toy / "data"), "--model", str(toy / "target"), *flags])
    err = capsys.readouterr().err.strip()
    assert (e.value.code, len(err.splitlines()), err.startswith("error: ") and words in err) == (2, 1, True), err


def test_eval_listwise_adds_greedy_list_and_beam_rows_at_M(toy):
    res = run("eval", toy / "data", "--model", toy / "target", "--K", 3, "--listwise", 4, "--no-popularity")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["listwise"]
    keys = {"task", "mode", "M", "recall@4", "ndcg@4", "recall@4_ci", "ndcg@4_ci"}
    assert [(r["task"], r["mode"], r["M"]) for r in rows] == [("listwise", "greedy-list", 4), ("listwise", "beam", 4)] \
        and all(keys <= set(r) for r in rows)
