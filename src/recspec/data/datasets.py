"""Datasets: interaction sequences split into training sequences and evaluation examples.

Every loader returns a `SplitData`: item ids are 0-based and index rows of the catalogue's `SIDIndex`.

Three on-disk formats are read:
- sequential (AtSpeed, e.g. Beauty): `sequential_{train,valid,test}.txt`, one line per user
  `USER ITEM ITEM ...`, 1-based item ids, already split into train / valid / test periods.
- LC-Rec (e.g. Office): `<name>.inter.json` {"USER": [item, ...]} in time order, 0-based ids.
- RecBole atomic files (e.g. MovieLens-100K): `<name>.inter` / `<name>.item`, tab separated, with a
  `field:type` header; split here by leave-one-out or by one global time cut.

Targets of an `Example` are de-duplicated (first occurrence kept): ground truth is a set.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field

import numpy as np

from recspec.data.sids import SIDIndex
from recspec.errors import DataError

HISTORY_LEN = 20  # items of history in a prompt (the spec's "last 20 items")
SEQUENTIAL_FILES = ("sequential_train.txt", "sequential_valid.txt", "sequential_test.txt")
RECBOLE_INSTALL = "pip install --no-deps recbole==1.2.1"
TEMPORAL_CUTS = (0.8, 0.9)  # quantiles of all interaction times ending the train / valid periods


@dataclass(frozen=True)
class Example:
    """One evaluation case: a user's history and the items to be found."""

    user: str
    history: tuple[int, ...]  # every earlier item in time order (prompts keep the last HISTORY_LEN)
    targets: tuple[int, ...]  # ground-truth items (temporal split: all test-period items)


@dataclass(frozen=True)
class SplitData:
    name: str
    num_items: int
    train: list[list[int]]  # per user, training-period item ids in time order
    valid: list[Example]
    test: list[Example]
    titles: dict[int, str] = field(default_factory=dict)  # item id -> display title, where known


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


Splits = tuple[list[list[int]], list[Example], list[Example]]  # (train sequences, valid, test)
TimedSeq = tuple[str, list[tuple[float, int]]]  # (user, [(time, item), ...] sorted by time)


@dataclass(frozen=True)
class _UserPeriods:
    """One user's items per period, in time order (0-based ids)."""

    user: str
    train: list[int]
    valid: list[int]
    test: list[int]


# --- split rules (pure) ----------------------------------------------------------------------------
def _example(user: str, history: list[int], targets: list[int]) -> Example | None:
    """An Example, or None where the history or the targets are empty."""
    if not history or not targets:
        return None
    return Example(user=user, history=tuple(history), targets=tuple(dict.fromkeys(targets)))


def _period_split(users: list[_UserPeriods]) -> Splits:
    """Period split: valid = (train items -> valid items), test = (train + valid items -> test items).

    Users with no train item contribute no train sequence; examples need a non-empty history and
    non-empty targets."""
    train = [list(u.train) for u in users if u.train]
    valid = [_example(u.user, u.train, u.valid) for u in users]
    test = [_example(u.user, u.train + u.valid, u.test) for u in users]
    return train, [e for e in valid if e], [e for e in test if e]


def _leave_one_out(seqs: list[tuple[str, list[int]]]) -> Splits:
    """Leave-one-out: test = (items[:-1] -> items[-1]), valid = (items[:-2] -> items[-2]), train = items[:-2].

    A user with fewer than 3 items has no room for a valid example with a history, so the whole
    sequence goes to training and the user gives no evaluation example."""
    users = []
    for user, items in seqs:
        if len(items) < 3:
            users.append(_UserPeriods(user, list(items), [], []))
        else:
            users.append(_UserPeriods(user, items[:-2], [items[-2]], [items[-1]]))
    return _period_split(users)


def _temporal_split(seqs: list[TimedSeq]) -> Splits:
    """One global cut: times < q80 are train, q80 <= t < q90 valid, t >= q90 test (q = time quantile).

    `seqs`: per user, (time, item) pairs sorted by time."""
    times = np.array([t for _, s in seqs for t, _ in s], dtype=np.float64)  # (N,)
    if times.size == 0:
        raise DataError("no interactions to split")
    c1, c2 = (float(c) for c in np.quantile(times, TEMPORAL_CUTS))
    users = [
        _UserPeriods(
            user,
            [i for t, i in s if t < c1],
            [i for t, i in s if c1 <= t < c2],
            [i for t, i in s if t >= c2],
        )
        for user, s in seqs
    ]
    return _period_split(users)


# --- file helpers ---------------------------------------------------------------------------------
def _find_file(folder: str, pattern: str, preferred: str | None = None) -> str:
    """The single file in `folder` matching `pattern`, or `preferred` where several match."""
    matches = sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))
    if preferred is not None and os.path.join(folder, preferred) in matches:
        return os.path.join(folder, preferred)
    if len(matches) != 1:
        what = "no file" if not matches else f"{len(matches)} files ({', '.join(map(os.path.basename, matches))})"
        raise DataError(f"{folder}: expected one {pattern} file, found {what}")
    return matches[0]


def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid json ({e.msg})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a json object")
    return raw


# --- sequential (AtSpeed) ---------------------------------------------------------------------------
def _int_token(path: str, ln: int, token: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise DataError(f"{path}:{ln}: item id {token!r} is not an integer") from None


def _read_sequential(path: str, num_items: int) -> list[tuple[int, str, list[int]]]:
    """Rows (line number, user, 0-based items) of one sequential_*.txt file; blank lines skipped."""
    rows = []
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with f:
        for ln, line in enumerate(f, start=1):
            tokens = line.split()
            if not tokens:
                continue
            items = [_int_token(path, ln, t) for t in tokens[1:]]
            for item in items:
                if not 1 <= item <= num_items:
                    raise DataError(f"{path}:{ln}: item id {item} is not in the index (1..{num_items})")
            rows.append((ln, tokens[0], [i - 1 for i in items]))
    return rows


def _check_same_users(paths: list[str], tables: list[list[tuple[int, str, list[int]]]]) -> None:
    """Every file must list the same users in the same order as the first (train) file."""
    ref_path, ref = paths[0], tables[0]
    for path, rows in zip(paths[1:], tables[1:]):
        for (ref_ln, ref_user, _), (ln, user, _) in zip(ref, rows):
            if user != ref_user:
                raise DataError(f"{path}:{ln}: user {user!r}, but {ref_path}:{ref_ln} has user {ref_user!r}")
        if len(rows) > len(ref):
            ln, user, _ = rows[len(ref)]
            raise DataError(f"{path}:{ln}: user {user!r} has no line in {ref_path}")
        if len(ref) > len(rows):
            ln, user, _ = ref[len(rows)]
            raise DataError(f"{ref_path}:{ln}: user {user!r} has no line in {path}")


def load_sequential(
    folder: str | os.PathLike, index_path: str | os.PathLike | None = None
) -> tuple[SplitData, SIDIndex]:
    """Load an AtSpeed-style period split (valid/test targets are every item of that period).

    `index_path` defaults to the single `*.index.json` in `folder`."""
    folder = os.fspath(folder)
    index = SIDIndex.load(index_path if index_path is not None else _find_file(folder, "*.index.json"))
    paths = [os.path.join(folder, name) for name in SEQUENTIAL_FILES]
    tables = [_read_sequential(p, index.num_items) for p in paths]
    _check_same_users(paths, tables)
    users = [_UserPeriods(tr[1], tr[2], va[2], te[2]) for tr, va, te in zip(*tables)]
    train, valid, test = _period_split(users)
    name = os.path.basename(os.path.normpath(folder))
    return SplitData(name=name, num_items=index.num_items, train=train, valid=valid, test=test), index


# --- LC-Rec json --------------------------------------------------------------------------------------
def _lcrec_sequences(raw: dict, path: str, num_items: int) -> list[tuple[str, list[int]]]:
    """Validate {"USER": [0-based items]} against the catalogue size."""
    seqs = []
    for user, items in raw.items():
        if not isinstance(items, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise DataError(f"{path}: user {user!r}: expected a list of integer item ids")
        bad = [i for i in items if not 0 <= i < num_items]
        if bad:
            raise DataError(f"{path}: user {user!r}: item id {bad[0]} is not in the index (0..{num_items - 1})")
        seqs.append((str(user), list(items)))
    return seqs


def _lcrec_titles(path: str, num_items: int) -> dict[int, str]:
    """Item id -> non-empty title from an LC-Rec `*.item.json`."""
    titles = {}
    for key, meta in _load_json(path).items():
        title = meta.get("title") if isinstance(meta, dict) else None
        if str(key).isdigit() and int(key) < num_items and isinstance(title, str) and title.strip():
            titles[int(key)] = title.strip()
    return titles


def load_lcrec(folder: str | os.PathLike) -> tuple[SplitData, SIDIndex]:
    """Load an LC-Rec dataset (`<name>.inter.json`, optional `<name>.item.json`, `*.index*.json`)
    and split it leave-one-out (see `_leave_one_out`)."""
    folder = os.fspath(folder)
    inter_path = _find_file(folder, "*.inter.json")
    name = os.path.basename(inter_path)[: -len(".inter.json")]
    index = SIDIndex.load(_find_file(folder, "*.index*.json", preferred=f"{name}.index.json"))
    seqs = _lcrec_sequences(_load_json(inter_path), inter_path, index.num_items)
    item_path = os.path.join(folder, f"{name}.item.json")
    titles = _lcrec_titles(item_path, index.num_items) if os.path.exists(item_path) else {}
    train, valid, test = _leave_one_out(seqs)
    return SplitData(name=name, num_items=index.num_items, train=train, valid=valid, test=test, titles=titles), index


# --- RecBole atomic files ---------------------------------------------------------------------------
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
    inter_path = _find_file(folder, "*.inter")
    item_map = _recbole_item_map(_read_recbole_inter(inter_path, min_rating))
    return _read_recbole_items(inter_path[: -len(".inter")] + ".item", item_map)


def load_recbole(
    folder: str | os.PathLike,
    split: str = "loo",
    index_path: str | os.PathLike | None = None,
    min_rating: float | None = None,
) -> tuple[SplitData, SIDIndex | None]:
    """Load RecBole atomic files `<name>.inter` (+ optional `<name>.item`).

    split: "loo" leave-one-out as LC-Rec, or "temporal": one global cut at the 80% / 90% quantiles of
    all interaction times. min_rating: keep interactions rated at least this. The index is
    `index_path`, else `<name>.index.json` in the folder, else None (build one with `sids.build_sids`)."""
    if split not in ("loo", "temporal"):
        raise DataError(f"split must be 'loo' or 'temporal', got {split!r}")
    folder = os.fspath(folder)
    inter_path = _find_file(folder, "*.inter")
    name = os.path.basename(inter_path)[: -len(".inter")]
    rows = _read_recbole_inter(inter_path, min_rating)
    if not rows:
        raise DataError(f"{inter_path}: no interactions left (min_rating={min_rating})")
    item_map = _recbole_item_map(rows)
    index = _recbole_index(folder, name, index_path, len(item_map))
    seqs = _recbole_user_seqs(rows, item_map)
    if split == "loo":
        train, valid, test = _leave_one_out([(u, [i for _, i in s]) for u, s in seqs])
    else:
        train, valid, test = _temporal_split(seqs)
    titles = _read_recbole_items(os.path.join(folder, f"{name}.item"), item_map).titles
    data = SplitData(name=name, num_items=len(item_map), train=train, valid=valid, test=test, titles=titles)
    return data, index


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
