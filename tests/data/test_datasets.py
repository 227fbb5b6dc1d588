"""Dataset loaders on tiny fixture files, their error messages, and smoke tests on the shipped data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recspec.data.datasets import Example, ItemIds, SplitData, load_lcrec, load_sequential
from recspec.data.recbole import find_ml100k, load_recbole, recbole_items
from recspec.data.sids import SIDIndex, collision_stats
from recspec.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"


def _write_index(path: Path, num_items: int) -> None:
    codes = np.stack([np.arange(num_items) % 3, np.arange(num_items)], axis=1)  # (I, 2), unique rows
    SIDIndex(codes=codes, level_sizes=(3, num_items), prefixes=("a", "b")).save(path)


# --- sequential ------------------------------------------------------------------------------------
SEQ_TRAIN = "1 1 2 3\n2 4\n3\n4 5 6\n"
SEQ_VALID = "1 4\n2\n3 1\n4 2 2\n"
SEQ_TEST = "1 5 6\n2 1\n3 2\n4\n"


def _sequential(tmp_path: Path, train=SEQ_TRAIN, valid=SEQ_VALID, test=SEQ_TEST) -> Path:
    for name, text in [("train", train), ("valid", valid), ("test", test)]:
        (tmp_path / f"sequential_{name}.txt").write_text(text)
    _write_index(tmp_path / "toy.index.json", 6)
    return tmp_path


def test_load_sequential_periods(tmp_path):
    data, index = load_sequential(_sequential(tmp_path))
    assert index.num_items == data.num_items == 6
    assert data.train == [[0, 1, 2], [3], [4, 5]]  # user 3 has no train items
    assert data.valid == [Example("1", (0, 1, 2), (3,)), Example("4", (4, 5), (1,))]  # targets de-duplicated
    assert data.test == [
        Example("1", (0, 1, 2, 3), (4, 5)),
        Example("2", (3,), (0,)),
        Example("3", (0,), (1,)),  # history from the valid period only
    ]


def test_load_sequential_explicit_index(tmp_path):
    folder = _sequential(tmp_path)
    _write_index(tmp_path / "other.idx", 9)
    data, index = load_sequential(folder, index_path=tmp_path / "other.idx")
    assert data.num_items == index.num_items == 9


def test_sequential_malformed_line(tmp_path):
    folder = _sequential(tmp_path, valid="1 4\n2 x7\n3 1\n4\n")
    with pytest.raises(DataError, match=r"sequential_valid\.txt:2: .*'x7'"):
        load_sequential(folder)


@pytest.mark.parametrize("bad", ["7", "0"])
def test_sequential_unknown_item(tmp_path, bad):
    folder = _sequential(tmp_path, test=f"1 5\n2\n3 {bad}\n4\n")
    with pytest.raises(DataError, match=rf"sequential_test\.txt:3: item id {bad} "):
        load_sequential(folder)


def test_sequential_user_mismatch(tmp_path):
    folder = _sequential(tmp_path, test="1 5\n2\n9 1\n4\n")
    with pytest.raises(DataError, match=r"sequential_test\.txt:3: user '9'.*sequential_train\.txt:3"):
        load_sequential(folder)


def test_sequential_missing_user_line(tmp_path):
    folder = _sequential(tmp_path, valid="1 4\n2\n3 1\n")
    with pytest.raises(DataError, match=r"sequential_train\.txt:4: user '4' has no line in .*sequential_valid"):
        load_sequential(folder)


def test_sequential_without_an_index_names_its_items(tmp_path):
    folder = _sequential(tmp_path)
    (folder / "toy.index.json").unlink()
    data, index = load_sequential(folder)
    assert index is None
    largest = max(int(t) for f in folder.glob("sequential_*.txt") for line in f.read_text().splitlines()
                  for t in line.split()[1:])
    assert data.num_items == largest and data.item_ids == tuple(range(1, largest + 1))
    (tmp_path / "again").mkdir()
    assert data.train == load_sequential(_sequential(tmp_path / "again"))[0].train  # same split as with an index


def test_file_ids_map_both_ways():
    ids = ItemIds(("10", "2", "abc"))
    assert ids.to_internal(["abc", 10, "2"], where="line 3") == [2, 0, 1]  # 10 and "10" are one id
    assert [ids.to_file(i) for i in (2, 0, 1)] == ["abc", "10", "2"]
    for bad in (7, 10.0, True, None):
        with pytest.raises(DataError, match=rf"line 3: unknown item id {bad!r} "):
            ids.to_internal(["2", bad], where="line 3")


# --- LC-Rec ------------------------------------------------------------------------------------------
def _lcrec(tmp_path: Path, inter: dict) -> Path:
    (tmp_path / "Toy.inter.json").write_text(json.dumps(inter))
    (tmp_path / "Toy.item.json").write_text(json.dumps({"0": {"title": "Pen"}, "1": {"title": ""}}))
    _write_index(tmp_path / "Toy.index.json", 5)
    _write_index(tmp_path / "Toy.index.rq.json", 4)  # not preferred over Toy.index.json
    return tmp_path


def test_load_lcrec_leave_one_out(tmp_path):
    data, index = load_lcrec(_lcrec(tmp_path, {"u1": [0, 1, 2, 3], "u2": [4, 0, 1], "u3": [2, 3], "u4": []}))
    assert data.name == "Toy" and data.num_items == index.num_items == 5
    assert data.train == [[0, 1], [4], [2, 3]]  # u3 (< 3 items) is train only
    assert data.valid == [Example("u1", (0, 1), (2,)), Example("u2", (4,), (0,))]
    assert data.test == [Example("u1", (0, 1, 2), (3,)), Example("u2", (4, 0), (1,))]
    assert data.titles == {0: "Pen"}
    assert data.item_ids == tuple(range(5))


def test_lcrec_without_an_index(tmp_path):
    folder = _lcrec(tmp_path, {"u1": [0, 1, 2, 3], "u2": [6, 0, 1]})
    for f in folder.glob("*.index*.json"):
        f.unlink()
    data, index = load_lcrec(folder)
    assert index is None and data.num_items == 7 and data.item_ids == tuple(range(7))


def test_lcrec_unknown_item_names_file_and_user(tmp_path):
    with pytest.raises(DataError, match=r"Toy\.inter\.json: user 'u2': item id 5"):
        load_lcrec(_lcrec(tmp_path, {"u1": [0, 1, 2], "u2": [1, 5, 2]}))


def test_lcrec_ambiguous_index(tmp_path):
    folder = _lcrec(tmp_path, {"u1": [0, 1, 2]})
    (folder / "Toy.index.json").unlink()
    _write_index(folder / "Toy.index.b.json", 5)
    with pytest.raises(DataError, match="2 files"):
        load_lcrec(folder)


# --- RecBole -----------------------------------------------------------------------------------------
INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "u1\t10\t5\t30\n"
    "u1\t2\t4\t10\n"
    "u1\t7\t1\t20\n"
    "u1\t3\t5\t20\n"  # tie with the line above: file order kept
    "u2\t2\t5\t95\n"
    "u2\t10\t5\t85\n"
    "u2\t7\t5\t50\n"
    "u2\t3\t5\t96\n"
    "u3\t7\t5\t40\n"
    "u3\t10\t5\t99\n"
)
ITEMS = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "2\tToy Story\t1995\tAnimation Comedy\n"
    "3\tHeat\t\tAction\n"
    "99\tNot Rated\t2000\tDrama\n"
)


def _recbole(tmp_path: Path, inter: str = INTER) -> Path:
    (tmp_path / "toy.inter").write_text(inter)
    (tmp_path / "toy.item").write_text(ITEMS)
    return tmp_path


def test_load_recbole_leave_one_out(tmp_path):
    data, index = load_recbole(_recbole(tmp_path), split="loo")
    # raw ids 2, 3, 7, 10 -> 0, 1, 2, 3; u1 in time order: 2, 7, 3, 10
    assert index is None and data.name == "toy" and data.num_items == 4
    assert data.train == [[0, 2], [2, 3], [2, 3]]
    assert data.valid == [Example("u1", (0, 2), (1,)), Example("u2", (2, 3), (0,))]
    assert data.test == [Example("u1", (0, 2, 1), (3,)), Example("u2", (2, 3, 0), (1,))]
    assert data.titles == {0: "Toy Story (1995)", 1: "Heat"}
    assert data.item_ids == ("2", "3", "7", "10")  # the .inter tokens, by internal id


def test_load_recbole_temporal(tmp_path):
    data, _ = load_recbole(_recbole(tmp_path), split="temporal")
    # times 10 20 20 30 40 50 85 95 96 99: q80 = 95.2, q90 = 96.3
    assert data.train == [[0, 2, 1, 3], [2, 3, 0], [2]]
    assert data.valid == [Example("u2", (2, 3, 0), (1,))]
    assert data.test == [Example("u3", (2,), (3,))]


def test_load_recbole_min_rating_and_index(tmp_path):
    folder = _recbole(tmp_path)
    _write_index(folder / "toy.index.json", 4)
    data, index = load_recbole(folder, min_rating=4)
    assert index is not None and index.num_items == 4
    assert data.test[0] == Example("u1", (0, 1), (3,))  # the rating-1 item 7 is dropped
    _write_index(folder / "wrong.json", 3)
    with pytest.raises(DataError, match="3 items"):
        load_recbole(folder, index_path=folder / "wrong.json")


def test_recbole_items(tmp_path):
    items = recbole_items(_recbole(tmp_path))
    assert items.raw_ids == ("2", "3", "7", "10")
    assert items.classes == (("Animation", "Comedy"), ("Action",), (), ())
    np.testing.assert_array_equal(items.class_multi_hot(), [[0, 1, 1], [1, 0, 0], [0, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize(
    "line, message",
    [("u4\t2\t5\n", r"toy\.inter:4: 3 tab-separated fields"), ("u4\t2\t5\tnoon\n", r"toy\.inter:4: timestamp 'noon'")],
)
def test_recbole_malformed_line(tmp_path, line, message):
    lines = INTER.splitlines(keepends=True)
    folder = _recbole(tmp_path, "".join(lines[:3] + [line] + lines[3:]))
    with pytest.raises(DataError, match=message):
        load_recbole(folder)


def test_recbole_bad_split(tmp_path):
    with pytest.raises(DataError, match="split"):
        load_recbole(_recbole(tmp_path), split="random")


# --- shipped data ---------------------------------------------------------------------------------
def _ml100k() -> str:
    try:
        return find_ml100k()
    except DataError:
        pytest.skip("RecBole (MovieLens-100K) is not installed")


def test_ml100k_smoke():
    data, index = load_recbole(_ml100k(), split="loo")
    assert index is None and data.num_items == 1682
    assert len(data.test) == len(data.valid) == len(data.train) == 943
    assert data.titles[0] == "Toy Story (1995)"
    assert recbole_items(_ml100k()).class_multi_hot().shape == (1682, 19)


def _raw_index(path: Path) -> SIDIndex:
    """The index file as written, collisions kept (what SIDIndex.load resolves)."""
    return SIDIndex.from_tokens(json.loads(path.read_text()), source=str(path))


@pytest.mark.skipif(not (SHARED / "beauty").is_dir(), reason="shared datasets not present")
def test_beauty_smoke():
    data, index = load_sequential(SHARED / "beauty")
    assert len(data.test) == 3553 and len(data.train) == 19383
    assert sum(len(s) for s in data.train) == 122241
    assert sum(len(e.targets) for e in data.test) == 7313
    raw = _raw_index(SHARED / "beauty" / "beauty.index.json")
    assert index.num_items == data.num_items == raw.num_items == 12035 and raw.num_levels == 4
    assert tuple(len(np.unique(raw.codes[:, l])) for l in range(4)) == (91, 256, 256, 256)
    assert raw.level_sizes == (255, 256, 256, 256)  # max code + 1: level a uses 91 of 0..254
    assert raw.collisions() == 12  # SOURCE.md: 12 items share their 4 codes with another item
    # loading appends the disambiguating level: one SID per item, the four codes kept
    assert index.disambiguated and index.num_levels == raw.num_levels + 1 and index.collisions() == 0
    np.testing.assert_array_equal(index.codes[:, :-1], raw.codes)
    assert collision_stats(index).disambiguated_items == raw.collisions()
    assert data.item_ids[0] == 1 and data.item_ids[-1] == data.num_items  # the files' 1-based ids


@pytest.mark.skipif(not (SHARED / "office").is_dir(), reason="shared datasets not present")
def test_office_smoke():
    data, index = load_lcrec(SHARED / "office")
    assert data.name == "Office" and data.num_items == index.num_items == 2420
    assert len(data.train) == len(data.valid) == len(data.test) == 4905
    assert sum(len(s) for s in data.train) + 2 * 4905 == 53258
    assert len(data.titles) == 2417
    raw = _raw_index(SHARED / "office" / "Office.index.rq-kmeans.json")
    stats = collision_stats(index)
    assert stats.items_on_shared_sids == 10  # SOURCE.md: 10 items share their code with another item
    assert index.collisions() == 0 and stats.disambiguated_items == raw.collisions() > 0
    assert data.item_ids == tuple(range(data.num_items))  # LC-Rec ids are 0-based as written


@pytest.mark.parametrize("name", ["beauty", "office"])
def test_shipped_catalogues_open_with_one_item_per_sid(name):
    from recspec.data.catalog import open_catalog

    if not (SHARED / name).is_dir():
        pytest.skip("shared datasets not present")
    cat = open_catalog(str(SHARED / name))
    assert cat.trie.num_sids == cat.data.num_items
    assert all(len(items) == 1 for items in cat.trie.sid_items)


def test_fit_sequences_add_the_valid_period_for_test():
    from recspec.data.datasets import _UserPeriods, period_split

    users = [_UserPeriods("a", [0, 1], [2, 2], [3]), _UserPeriods("b", [], [4], [5]), _UserPeriods("c", [6], [], [])]
    train, train_valid, valid, test = period_split(users)
    assert train == [[0, 1], [6]]
    assert train_valid == [[0, 1, 2, 2], [4], [6]]  # repeats kept, users without train items included
    assert [e.history for e in test] == [(0, 1, 2, 2), (4,)]  # the test histories are these sequences
    data = SplitData("toy", 7, train, valid, test, train_valid=train_valid)
    assert data.fit_sequences("valid") == train and data.fit_sequences("test") == train_valid
