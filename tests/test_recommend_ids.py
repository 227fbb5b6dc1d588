"""Item ids at the user-facing edge: `recommend` (CLI and `Recommender.recommend`) takes and returns the ids
as the dataset's interaction files write them; `Recommender.recommend_internal` takes internal ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from recspec import cli
from recspec.data.catalog import open_catalog
from recspec.data.sids import SIDIndex
from recspec.data.vocab import Vocab
from recspec.models.hf import CheckpointMeta, save_checkpoint
from recspec.recommender import Recommender

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
NUM_ITEMS = 24
K = 5


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def write_sequential(folder: Path) -> None:
    """12 users, 1-based ids, and an index where items 3, 4, 5 (0-based) share one SID."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, n in (("train", (3, 7)), ("valid", (1, 2)), ("test", (2, 5))):
        lines = [" ".join([str(u)] + [str(int(i)) for i in rng.integers(1, NUM_ITEMS + 1, int(rng.integers(*n)))])
                 for u in range(1, 13)]
        (folder / f"sequential_{split}.txt").write_text("\n".join(lines) + "\n")
    codes = np.stack([np.arange(NUM_ITEMS) // 6, np.arange(NUM_ITEMS) % 6], axis=1)
    codes[[4, 5]] = codes[3]
    (folder / "toy.index.json").write_text(json.dumps(SIDIndex(codes, (4, 6), ("a", "b")).to_tokens()))


def write_recbole(folder: Path) -> list[str]:
    """A RecBole .inter whose item tokens are numbers in no simple relation to the internal ids."""
    folder.mkdir(parents=True)
    tokens = [str(t) for t in np.random.default_rng(2).choice(np.arange(100, 999), NUM_ITEMS, replace=False)]
    rng = np.random.default_rng(3)
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(10):
        for t, item in enumerate(rng.choice(tokens, int(rng.integers(4, 9)), replace=False)):
            rows.append(f"u{u}\t{item}\t{t}")
    (folder / "toy.inter").write_text("\n".join(rows) + "\n")
    return tokens


def checkpoint(data: str, root: Path, make_decoder) -> Path:
    """A tiny random target for the catalogue (index built into `root` where the data has none)."""
    cat = open_catalog(data, index_dir=str(root))
    vocab = Vocab.for_index(cat.index)
    save_checkpoint(make_decoder(vocab, seed=5), CheckpointMeta(vocab, cat.index.fingerprint()), root / "target")
    return root / "target"


def run_recommend(data: str, model: Path, histories: list) -> list[dict]:
    lines = "".join(json.dumps({"history": h}) + "\n" for h in histories)
    res = CliRunner().invoke(cli.app, ["recommend", data, "--model", str(model), "--K", str(K)], input=lines)
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in res.stdout.splitlines()]


@pytest.fixture(params=["toy", "beauty"])
def sequential(request, tmp_path, make_decoder) -> tuple[str, Path]:
    if request.param == "beauty":
        if not (SHARED / "beauty").is_dir():
            pytest.skip("shared datasets not present")
        data = str(SHARED / "beauty")
    else:
        data = str(tmp_path / "data")
        write_sequential(tmp_path / "data")
    return data, checkpoint(data, tmp_path, make_decoder)


def test_a_test_line_as_written_gives_the_library_list_on_internal_ids(sequential):
    data, model = sequential
    with open(Path(data) / "sequential_test.txt") as f:
        line = next(line for line in f if len(line.split()) >= 3)  # USER ITEM ITEM ...
    written = [int(t) for t in line.split()[1:]]
    (out,) = run_recommend(data, model, [written])
    assert out["history"] == written
    rec = Recommender.load(data, str(model), index_dir=str(model.parent))
    beams, _ = rec.recommend_internal([[i - 1 for i in written]], K)  # sequential files: internal = id - 1
    internal = rec.catalog.trie.items(beams.sids)[0].tolist()
    assert [r["item"] for r in out["recommendations"]] == [i + 1 for i in internal]  # file-format ids out
    assert [r["sid"] for r in out["recommendations"]] == [rec.catalog.index.sid_string(i) for i in internal]
    assert len(set(internal)) == K  # K distinct items, even where the index file had shared SIDs
    recs, _ = rec.recommend([written], K)
    assert recs.items == [[i + 1 for i in internal]] and recs.internal[0].tolist() == internal


def test_recbole_ids_are_the_item_tokens(tmp_path, make_decoder):
    tokens = write_recbole(tmp_path / "data")
    model = checkpoint(str(tmp_path / "data"), tmp_path, make_decoder)
    rec = Recommender.load(str(tmp_path / "data"), str(model), index_dir=str(tmp_path))
    order = sorted(tokens, key=int)  # internal ids number the tokens in sorted order
    history = [int(tokens[0]), int(tokens[5]), int(tokens[9])]
    (out,) = run_recommend(str(tmp_path / "data"), model, [history])
    beams, _ = rec.recommend_internal([[order.index(str(t)) for t in history]], K)
    want = [order[i] for i in rec.catalog.trie.items(beams.sids)[0].tolist()]
    assert [r["item"] for r in out["recommendations"]] == want and len(set(want)) == K
    as_strings, _ = rec.recommend([[str(t) for t in history]], K)  # a token as text is the same id
    assert as_strings.items == [want]


def test_an_unknown_id_is_a_one_line_error_naming_it_and_its_history(tmp_path, make_decoder, monkeypatch, capsys):
    write_sequential(tmp_path / "data")
    model = checkpoint(str(tmp_path / "data"), tmp_path, make_decoder)
    histories = tmp_path / "histories.jsonl"
    histories.write_text(json.dumps({"history": [1, 2]}) + "\n" + json.dumps({"history": [3, 0]}) + "\n")
    monkeypatch.setattr("sys.argv", ["recspec", "recommend", str(tmp_path / "data"), "--model", str(model),
                                     "--input", str(histories)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert f"{histories}:2: unknown item id 0" in err  # line 2 of the input; 0 is no 1-based id
