"""`recspec data build-sids` for every data format, `recspec data inspect`, and how a catalogue picks its
index (an --index-dir copy first, then the folder's own, else built)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from recspec import cli
from recspec.data.catalog import INDEX_FILE, open_catalog
from recspec.data.recbole import find_ml100k
from recspec.data.sids import SIDIndex, collision_stats, level_stats
from recspec.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"
MAX_DISAMBIGUATED = 0.05  # the share of items a built index may leave on a disambiguating code


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def data_cli(*args) -> dict:
    res = CliRunner().invoke(cli.app, ["data", *map(str, args)])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def colliding_index(num_items: int) -> SIDIndex:
    """Two levels, item i = (i // 4, i % 4), except that items 1 and 2 repeat item 0's SID."""
    codes = np.stack([np.arange(num_items) // 4, np.arange(num_items) % 4], axis=1)
    codes[[1, 2]] = codes[0]
    return SIDIndex(codes=codes, level_sizes=(int(codes[:, 0].max()) + 1, 4), prefixes=("a", "b"))


def write_folder(folder: Path, fmt: str, num_items: int = 40, users: int = 30) -> None:
    """A small data folder of `fmt` (sequential and LC-Rec with an index whose SIDs collide)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    seqs = [rng.choice(num_items, int(rng.integers(4, 9)), replace=False).tolist() for _ in range(users)]
    seqs[0] = list(range(num_items))  # every item is named
    raw = json.dumps(colliding_index(num_items).to_tokens())  # as an index file holds it: collisions kept
    if fmt == "sequential":
        for split, part in (("train", slice(0, -2)), ("valid", slice(-2, -1)), ("test", slice(-1, None))):
            lines = [" ".join(str(x) for x in [u + 1] + [i + 1 for i in s[part]]) for u, s in enumerate(seqs)]
            (folder / f"sequential_{split}.txt").write_text("\n".join(lines) + "\n")
        (folder / "toy.index.json").write_text(raw)
    elif fmt == "lcrec":
        (folder / "Toy.inter.json").write_text(json.dumps({f"u{u}": s for u, s in enumerate(seqs)}))
        (folder / "Toy.index.json").write_text(raw)
    else:
        rows = ["user_id:token\titem_id:token\ttimestamp:float"]
        rows += [f"u{u}\tm{i}\t{t}" for u, s in enumerate(seqs) for t, i in enumerate(s)]
        (folder / "toy.inter").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("fmt", ["sequential", "lcrec", "recbole"])
def test_build_sids_works_on_every_format_and_ignores_the_index(tmp_path, fmt):
    write_folder(tmp_path / "data", fmt)
    out = data_cli("build-sids", tmp_path / "data", "--out", tmp_path / "run" / INDEX_FILE)
    built = SIDIndex.load(tmp_path / "run" / INDEX_FILE)
    assert out["items"] == built.num_items == 40 and out["levels"] == built.num_levels
    assert len(np.unique(built.codes, axis=0)) == built.num_items  # one SID per item
    assert out["disambiguated_share"] == collision_stats(built).disambiguated_share
    assert not np.array_equal(built.codes[:, :2], colliding_index(40).codes)  # not the folder's index
    cat = open_catalog(str(tmp_path / "data"), index_dir=str(tmp_path / "run"))  # the loaders use it
    assert cat.index_path == str(tmp_path / "run" / INDEX_FILE) and cat.index.fingerprint() == built.fingerprint()


def test_catalogue_index_order(tmp_path):
    """--index-dir's index.json, else the folder's own index, else built and saved into --index-dir."""
    write_folder(tmp_path / "data", "lcrec")
    own = open_catalog(str(tmp_path / "data"), index_dir=str(tmp_path / "run"))
    assert own.index_path == str(tmp_path / "data" / "Toy.index.json") and own.index.disambiguated
    assert not (tmp_path / "run" / INDEX_FILE).exists()
    (tmp_path / "data" / "Toy.index.json").unlink()
    built = open_catalog(str(tmp_path / "data"), index_dir=str(tmp_path / "run"))
    assert built.index_path == str(tmp_path / "run" / INDEX_FILE)
    assert SIDIndex.load(built.index_path).fingerprint() == built.index.fingerprint()
    colliding_index(39).save(tmp_path / "run" / INDEX_FILE)  # a stale index of another catalogue
    with pytest.raises(DataError, match=r"Toy\.inter\.json: user 'u0': item id 39 is not in the index \(0\.\.38\)"):
        open_catalog(str(tmp_path / "data"), index_dir=str(tmp_path / "run"))


def test_inspect_reports_levels_and_collisions(tmp_path):
    write_folder(tmp_path / "data", "sequential")
    out = data_cli("inspect", tmp_path / "data")
    index = SIDIndex.load(tmp_path / "data" / "toy.index.json")
    raw = colliding_index(40)
    assert out["sid_levels"] == index.num_levels == raw.num_levels + 1
    assert [lv["codes_used"] for lv in out["levels"]] == [len(np.unique(index.codes[:, l])) for l in range(index.num_levels)]
    assert [lv["tokens"] for lv in out["levels"]] == list(index.level_sizes)
    assert out["levels"] == [json.loads(json.dumps(s.__dict__)) for s in level_stats(index)]
    col = out["collisions"]
    assert col["disambiguated_items"] == raw.collisions() and col["largest_group"] == 3
    assert col["items_on_shared_sids"] == 3 and "dup" in col["action"]
    assert out["distinct_sids"] == out["items"] == 40


@pytest.mark.skipif(not (SHARED / "beauty").is_dir(), reason="shared datasets not present")
def test_inspect_counts_the_codes_beauty_uses():
    out = data_cli("inspect", SHARED / "beauty")
    raw = json.loads((SHARED / "beauty" / "beauty.index.json").read_text())
    first = {tokens[0] for tokens in raw.values()}
    level_a = out["levels"][0]
    assert level_a["codes_used"] == len(first) == level_a["fanout_max"]  # the root's children
    assert level_a["tokens"] == 1 + max(int(t[3:-1]) for t in first) > level_a["codes_used"]
    assert out["collisions"]["disambiguated_items"] > 0 and out["distinct_sids"] == out["items"]


def built_share(tmp_path: Path, data: str) -> tuple[SIDIndex, dict]:
    out = data_cli("build-sids", data, "--out", tmp_path / "built.index.json")
    return SIDIndex.load(tmp_path / "built.index.json"), out


@pytest.mark.skipif(not (SHARED / "office").is_dir(), reason="shared datasets not present")
def test_build_sids_on_office_without_its_index(tmp_path):
    folder = tmp_path / "office"
    folder.mkdir()
    for name in ("Office.inter.json", "Office.item.json"):  # the index file left out
        shutil.copy(SHARED / "office" / name, folder / name)
    index, out = built_share(tmp_path, str(folder))
    items = 1 + max(i for s in json.loads((folder / "Office.inter.json").read_text()).values() for i in s)
    assert index.num_items == items and len(np.unique(index.codes, axis=0)) == items
    assert out["disambiguated_share"] == collision_stats(index).disambiguated_share <= MAX_DISAMBIGUATED


def test_build_sids_on_ml100k(tmp_path):
    try:
        find_ml100k()
    except DataError:
        pytest.skip("RecBole (MovieLens-100K) is not installed")
    index, out = built_share(tmp_path, "ml-100k")
    assert len(np.unique(index.codes, axis=0)) == index.num_items == out["items"]
    assert out["disambiguated_share"] == collision_stats(index).disambiguated_share <= MAX_DISAMBIGUATED
