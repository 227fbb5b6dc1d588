"""RecBole atomic files (e.g. MovieLens-100K): `<name>.inter` / `<name>.item`, tab separated, with a
`field:type` header; split here by leave-one-out or by one global time cut.

Internal item ids number the item tokens of the .inter file in sorted order (numeric tokens
numerically); the tokens themselves are the dataset's own ids (`SplitData.item_ids`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from recspec.data.datasets import SplitData, TimedSeq, find_file, leave_one_out, temporal_split
from recspec.data.sids import SIDIndex
from recspec.errors import DataError

RECBOLE_INSTALL = "pip install --no-deps recbole==1.2.1"


@dataclass(frozen=True)
class RecBoleItems:
    """Side information of a RecBole catalogue, by dense item id (the ids `load_recbole` uses)."""

    raw_ids: tuple[str, ...]  # (I,) dense id -> raw item token of the .inter file
    titles: dict[int, str]  # dense id -> "Title (year)", where the .item file has one
    classes: tuple[tuple[str, ...], ...]  # (I,) genre / class tokens per item, () when unknown

    def class_multi_hot(self) -> np.ndarray:
        """(I, C) float32 multi-hot of the class tokens; columns in sorted token order."""
        vocab = sorted({c for cs in self.classes for c in cs})
        col = {c: j for j, c in enumerate(vocab)}
        out = np.zeros((len(self.classes), len(vocab)), dtype=np.float32)
        for i, cs in enumerate(self.classes):
            out[i, [col[c] for c in cs]] = 1.0
        return out

def _read_atomic(path: str) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:
    """A RecBole atomic file: column name -> position (from the `name:type` header), and the rows as
    (line number, fields). Blank lines are skipped."""
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with f:
        cols: dict[str, int] = {}
        for j, col in enumerate(f.readline().rstrip("\r\n").split("\t")):
            name, sep, _ = col.partition(":")
            if not sep or not name:
                raise DataError(f"{path}:1: header column {col!r} is not of the form name:type")
            cols[name] = j
        rows = []
        for ln, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != len(cols):
                raise DataError(f"{path}:{ln}: {len(fields)} tab-separated fields, the header has {len(cols)}")
            rows.append((ln, fields))
    return cols, rows


def _number(path: str, ln: int, name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{path}:{ln}: {name} {value!r} is not a number") from None


def _read_recbole_inter(path: str, min_rating: float | None) -> list[tuple[str, str, float]]:
    """(user, raw item, time) per interaction, in file order; time = line number without a timestamp."""
    cols, rows = _read_atomic(path)
    for need in ("user_id", "item_id") + (("rating",) if min_rating is not None else ()):
        if need not in cols:
            raise DataError(f"{path}:1: the header has no {need} column")
    u_col, i_col, t_col = cols["user_id"], cols["item_id"], cols.get("timestamp")
    out = []
    for ln, f in rows:
        if not f[u_col] or not f[i_col]:
            raise DataError(f"{path}:{ln}: empty user_id or item_id")
        if min_rating is not None and _number(path, ln, "rating", f[cols["rating"]]) < min_rating:
            continue
        t = _number(path, ln, "timestamp", f[t_col]) if t_col is not None else float(ln)
        out.append((f[u_col], f[i_col], t))
    return out


def _token_key(token: str) -> tuple[int, int, str]:
    """Sort key: numeric tokens numerically, before the others (sorted as strings)."""
    return (0, int(token), "") if token.isdecimal() else (1, 0, token)


def _recbole_item_map(rows: list[tuple[str, str, float]]) -> dict[str, int]:
    """Raw item token -> dense 0-based id, in sorted raw-id order (deterministic)."""
    return {t: i for i, t in enumerate(sorted({r[1] for r in rows}, key=_token_key))}


def _recbole_user_seqs(rows: list[tuple[str, str, float]], item_map: dict[str, int]) -> list[TimedSeq]:
    """Per user (sorted raw-id order): (time, item) sorted by time, ties kept in file order."""
    by_user: dict[str, list[tuple[float, int]]] = {}
    for user, item, t in rows:
        by_user.setdefault(user, []).append((t, item_map[item]))
    return [(u, sorted(by_user[u], key=lambda p: p[0])) for u in sorted(by_user, key=_token_key)]


def _first_col(cols: dict[str, int], names: tuple[str, ...]) -> int | None:
    return next((cols[n] for n in names if n in cols), None)


def _read_recbole_items(path: str, item_map: dict[str, int]) -> RecBoleItems:
    """Titles ("Title (year)") and class tokens from `<name>.item`, where that file exists."""
    raw_ids = tuple(sorted(item_map, key=item_map.__getitem__))
    titles: dict[int, str] = {}
    classes: list[tuple[str, ...]] = [()] * len(raw_ids)
    if not os.path.exists(path):
        return RecBoleItems(raw_ids=raw_ids, titles=titles, classes=tuple(classes))
    cols, rows = _read_atomic(path)
    if "item_id" not in cols:
        raise DataError(f"{path}:1: the header has no item_id column")
    title_col = _first_col(cols, ("movie_title", "title"))
    year_col = _first_col(cols, ("release_year", "year"))
    class_col = _first_col(cols, ("class", "genre", "categories"))
    for _, f in rows:
        item = item_map.get(f[cols["item_id"]])
        if item is None:
            continue  # an item without interactions is not in the catalogue
        title = f[title_col].strip() if title_col is not None else ""
        year = f[year_col].strip() if year_col is not None else ""
        if title:
            titles[item] = f"{title} ({year})" if year else title
        if class_col is not None:
            classes[item] = tuple(f[class_col].split())
    return RecBoleItems(raw_ids=raw_ids, titles=titles, classes=tuple(classes))


def _recbole_index(folder: str, name: str, index_path: str | os.PathLike | None, num_items: int) -> SIDIndex | None:
    """The given index, else `<name>.index.json` in the folder, else None; it must cover the catalogue."""
    path = index_path if index_path is not None else os.path.join(folder, f"{name}.index.json")
    if index_path is None and not os.path.exists(path):
        return None
    index = SIDIndex.load(path)
    if index.num_items != num_items:
        raise DataError(f"{os.fspath(path)}: {index.num_items} items, but the interactions name {num_items} items")
    return index


def recbole_items(folder: str | os.PathLike, min_rating: float | None = None) -> RecBoleItems:
    """Side information (raw ids, titles, class tokens) under the dense ids `load_recbole` assigns
    with the same `min_rating`."""
    folder = os.fspath(folder)
    inter_path = find_file(folder, "*.inter")
    item_map = _recbole_item_map(_read_recbole_inter(inter_path, min_rating))
    return _read_recbole_items(inter_path[: -len(".inter")] + ".item", item_map)


def _check_split(split: str) -> None:
    if split not in ("loo", "temporal"):
        raise DataError(f"split must be 'loo' or 'temporal', got {split!r}")


def read_recbole(folder: str | os.PathLike, split: str = "loo", min_rating: float | None = None) -> SplitData:
    """RecBole atomic files `<name>.inter` (+ optional `<name>.item`), split, without SIDs.

    split: "loo" leave-one-out as LC-Rec, or "temporal": one global cut at the 80% / 90% quantiles of
    all interaction times. min_rating: keep interactions rated at least this."""
    _check_split(split)
    folder = os.fspath(folder)
    inter_path = find_file(folder, "*.inter")
    name = os.path.basename(inter_path)[: -len(".inter")]
    rows = _read_recbole_inter(inter_path, min_rating)
    if not rows:
        raise DataError(f"{inter_path}: no interactions left (min_rating={min_rating})")
    item_map = _recbole_item_map(rows)
    seqs = _recbole_user_seqs(rows, item_map)
    if split == "loo":
        train, train_valid, valid, test = leave_one_out([(u, [i for _, i in s]) for u, s in seqs])
    else:
        train, train_valid, valid, test = temporal_split(seqs)
    items = _read_recbole_items(os.path.join(folder, f"{name}.item"), item_map)
    return SplitData(name=name, num_items=len(item_map), train=train, valid=valid, test=test, titles=items.titles,
                     item_ids=items.raw_ids, train_valid=train_valid)


def load_recbole(
    folder: str | os.PathLike,
    split: str = "loo",
    index_path: str | os.PathLike | None = None,
    min_rating: float | None = None,
) -> tuple[SplitData, SIDIndex | None]:
    """`read_recbole` with its index: `index_path`, else `<name>.index.json` in the folder, else None
    (build one with `recspec.data.sid_build`)."""
    _check_split(split)
    data = read_recbole(folder, split, min_rating)
    return data, _recbole_index(os.fspath(folder), data.name, index_path, data.num_items)


def find_ml100k() -> str:
    """Folder of the MovieLens-100K atomic files shipped in the RecBole wheel (recbole is not imported)."""
    from importlib import metadata

    try:
        folder = metadata.distribution("recbole").locate_file("recbole/dataset_example/ml-100k")
    except metadata.PackageNotFoundError:
        raise DataError(f"MovieLens-100K comes with RecBole, which is not installed: {RECBOLE_INSTALL}") from None
    folder = os.fspath(folder)
    if not os.path.exists(os.path.join(folder, "ml-100k.inter")):
        raise DataError(f"{folder}: ml-100k.inter not found; reinstall RecBole: {RECBOLE_INSTALL}")
    return folder
