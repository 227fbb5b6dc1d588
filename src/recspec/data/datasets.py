"""Datasets: interaction sequences split into training sequences and evaluation examples.

Every loader returns a `SplitData`. Inside the library item ids are internal: 0-based, the rows of the
catalogue's `SIDIndex`. The ids a user reads and writes are the dataset's own, as its interaction files
write them (`SplitData.item_ids`, mapped by `ItemIds`); they differ by format:
- sequential (AtSpeed, e.g. Beauty): `sequential_{train,valid,test}.txt`, one line per user
  `USER ITEM ITEM ...`, 1-based item ids, already split into train / valid / test periods.
  File id n is internal id n - 1.
- LC-Rec (e.g. Office): `<name>.inter.json` {"USER": [item, ...]} in time order, 0-based ids: file
  id n is internal id n.
- RecBole atomic files (e.g. MovieLens-100K, `recspec.data.recbole`): `<name>.inter` / `<name>.item`,
  tab separated, with a `field:type` header; split there by leave-one-out or by one global time cut.
  File ids are the item tokens (strings), internal ids number them in sorted token order.

An index is optional: without one, the catalogue is the items the interaction files name, and
`recspec.data.sid_build` builds SIDs for it. Targets of an `Example` are de-duplicated (first
occurrence kept): ground truth is a set.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from recspec.data.sids import SIDIndex
from recspec.errors import DataError

HISTORY_LEN = 20  # items of history in a prompt (the spec's "last 20 items")
SEQUENTIAL_FILES = ("sequential_train.txt", "sequential_valid.txt", "sequential_test.txt")
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
    # per user, train- and valid-period item ids in time order: what the test period is predicted from
    # (a test example's history); [] for data made in memory, where `fit_sequences` falls back to train
    train_valid: list[list[int]] = field(default_factory=list)
    # (I,) internal id -> the id as the interaction files write it (int, or a RecBole token);
    # () for data made in memory, whose only ids are the internal ones
    item_ids: tuple[int | str, ...] = ()

    def fit_sequences(self, split: str) -> list[list[int]]:
        """The sequences a model evaluated on `split` may be fitted on: the train period for "valid",
        the train and valid periods for "test" (every baseline and the final target fit see the same)."""
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        return self.train if split == "valid" or not self.train_valid else self.train_valid

    def file_ids(self) -> "ItemIds":
        """The mapping between the dataset's own item ids and the internal ones."""
        return ItemIds(self.item_ids or tuple(range(self.num_items)))


@dataclass(frozen=True)
class ItemIds:
    """A dataset's own item ids (as its interaction files write them) <-> internal 0-based ids.

    An id is looked up by its text, so 7 and "7" are the same id; 7.0, true or null are no id."""

    written: tuple[int | str, ...]  # (I,) internal id -> file id

    @functools.cached_property
    def _internal(self) -> dict[str, int]:
        return {str(w): i for i, w in enumerate(self.written)}

    def to_internal(self, ids: Iterable[int | str], where: str) -> list[int]:
        """File ids -> internal ids; an unknown id is a DataError naming it and `where`."""
        out = []
        for x in ids:
            item = self._internal.get(x if isinstance(x, str) else str(x)) if _is_id(x) else None
            if item is None:
                first, last = self.written[0], self.written[-1]
                raise DataError(f"{where}: unknown item id {x!r} (the dataset's ids, as in its interaction "
                                f"files, run {first!r}..{last!r})")
            out.append(item)
        return out

    def to_file(self, item: int) -> int | str:
        """Internal id -> the dataset's id."""
        return self.written[item]


def _is_id(x: object) -> bool:
    return isinstance(x, str) or (isinstance(x, int) and not isinstance(x, bool))


# (train sequences, train + valid sequences, valid examples, test examples)
Splits = tuple[list[list[int]], list[list[int]], list[Example], list[Example]]
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


def period_split(users: list[_UserPeriods]) -> Splits:
    """Period split: valid = (train items -> valid items), test = (train + valid items -> test items);
    the train + valid sequences are what a model evaluated on the test period may be fitted on.

    Users with no train item contribute no train sequence; examples need a non-empty history and
    non-empty targets."""
    train = [list(u.train) for u in users if u.train]
    train_valid = [u.train + u.valid for u in users if u.train + u.valid]
    valid = [_example(u.user, u.train, u.valid) for u in users]
    test = [_example(u.user, u.train + u.valid, u.test) for u in users]
    return train, train_valid, [e for e in valid if e], [e for e in test if e]


def leave_one_out(seqs: list[tuple[str, list[int]]]) -> Splits:
    """Leave-one-out: test = (items[:-1] -> items[-1]), valid = (items[:-2] -> items[-2]), train = items[:-2].

    A user with fewer than 3 items has no room for a valid example with a history, so the whole
    sequence goes to training and the user gives no evaluation example."""
    users = []
    for user, items in seqs:
        if len(items) < 3:
            users.append(_UserPeriods(user, list(items), [], []))
        else:
            users.append(_UserPeriods(user, items[:-2], [items[-2]], [items[-1]]))
    return period_split(users)


def temporal_split(seqs: list[TimedSeq]) -> Splits:
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
    return period_split(users)


# --- file helpers ---------------------------------------------------------------------------------
def find_file(folder: str, pattern: str, preferred: str | None = None) -> str:
    """The single file in `folder` matching `pattern`, or `preferred` where several match."""
    matches = sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))
    if preferred is not None and os.path.join(folder, preferred) in matches:
        return os.path.join(folder, preferred)
    if len(matches) != 1:
        what = "no file" if not matches else f"{len(matches)} files ({', '.join(map(os.path.basename, matches))})"
        raise DataError(f"{folder}: expected one {pattern} file, found {what}")
    return matches[0]


def load_json(path: str) -> dict:
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


def _read_sequential(path: str, num_items: int | None) -> list[tuple[int, str, list[int]]]:
    """Rows (line number, user, 0-based items) of one sequential_*.txt file; blank lines skipped.
    num_items: the index's size (file ids 1..num_items), None without an index (any id >= 1)."""
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
                if item < 1 or (num_items is not None and item > num_items):
                    known = f"in the index (1..{num_items})" if num_items is not None else "a 1-based id"
                    raise DataError(f"{path}:{ln}: item id {item} is not {known}")
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


def own_index_path(folder: str | os.PathLike, pattern: str, preferred: str | None = None) -> str | None:
    """The folder's own SID index file (`pattern`, `preferred` where several match), None without one."""
    folder = os.fspath(folder)
    return find_file(folder, pattern, preferred) if glob.glob(os.path.join(glob.escape(folder), pattern)) else None


def read_sequential(folder: str | os.PathLike, num_items: int | None = None) -> SplitData:
    """An AtSpeed-style period split (valid/test targets are every item of that period), without SIDs.
    num_items: the catalogue size (the index's); None: the largest item id in the files."""
    folder = os.fspath(folder)
    paths = [os.path.join(folder, name) for name in SEQUENTIAL_FILES]
    tables = [_read_sequential(p, num_items) for p in paths]
    _check_same_users(paths, tables)
    if num_items is None:
        num_items = 1 + max((i for t in tables for _, _, items in t for i in items), default=-1)
    users = [_UserPeriods(tr[1], tr[2], va[2], te[2]) for tr, va, te in zip(*tables)]
    train, train_valid, valid, test = period_split(users)
    name = os.path.basename(os.path.normpath(folder))
    return SplitData(name=name, num_items=num_items, train=train, valid=valid, test=test, train_valid=train_valid,
                     item_ids=tuple(range(1, num_items + 1)))


def load_sequential(
    folder: str | os.PathLike, index_path: str | os.PathLike | None = None
) -> tuple[SplitData, SIDIndex | None]:
    """`read_sequential` with its index: `index_path`, else the single `*.index.json` in `folder`,
    else None (the catalogue is then the items the files name)."""
    path = index_path if index_path is not None else own_index_path(folder, "*.index.json")
    index = SIDIndex.load(path) if path is not None else None
    return read_sequential(folder, index.num_items if index else None), index


# --- LC-Rec json --------------------------------------------------------------------------------------
def _lcrec_sequences(raw: dict, path: str, num_items: int | None) -> list[tuple[str, list[int]]]:
    """Validate {"USER": [0-based items]} against the catalogue size (None: any id >= 0)."""
    seqs = []
    for user, items in raw.items():
        if not isinstance(items, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise DataError(f"{path}: user {user!r}: expected a list of integer item ids")
        bad = [i for i in items if i < 0 or (num_items is not None and i >= num_items)]
        if bad:
            known = f"in the index (0..{num_items - 1})" if num_items is not None else "a 0-based id"
            raise DataError(f"{path}: user {user!r}: item id {bad[0]} is not {known}")
        seqs.append((str(user), list(items)))
    return seqs


def _lcrec_titles(path: str, num_items: int) -> dict[int, str]:
    """Item id -> non-empty title from an LC-Rec `*.item.json`."""
    titles = {}
    for key, meta in load_json(path).items():
        title = meta.get("title") if isinstance(meta, dict) else None
        if str(key).isdigit() and int(key) < num_items and isinstance(title, str) and title.strip():
            titles[int(key)] = title.strip()
    return titles


def lcrec_name(folder: str | os.PathLike) -> str:
    """`<name>` of the folder's single `<name>.inter.json`."""
    return os.path.basename(find_file(os.fspath(folder), "*.inter.json"))[: -len(".inter.json")]


def read_lcrec(folder: str | os.PathLike, num_items: int | None = None) -> SplitData:
    """An LC-Rec dataset (`<name>.inter.json`, optional `<name>.item.json`) split leave-one-out (see
    `leave_one_out`), without SIDs. num_items: the index's; None: 1 + the largest id in the file."""
    folder, name = os.fspath(folder), lcrec_name(folder)
    inter_path = os.path.join(folder, f"{name}.inter.json")
    seqs = _lcrec_sequences(load_json(inter_path), inter_path, num_items)
    if num_items is None:
        num_items = 1 + max((i for _, items in seqs for i in items), default=-1)
    item_path = os.path.join(folder, f"{name}.item.json")
    titles = _lcrec_titles(item_path, num_items) if os.path.exists(item_path) else {}
    train, train_valid, valid, test = leave_one_out(seqs)
    return SplitData(name=name, num_items=num_items, train=train, valid=valid, test=test, titles=titles,
                     train_valid=train_valid,
                     item_ids=tuple(range(num_items)))


def load_lcrec(
    folder: str | os.PathLike, index_path: str | os.PathLike | None = None
) -> tuple[SplitData, SIDIndex | None]:
    """`read_lcrec` with its index: `index_path`, else the folder's `*.index*.json` (`<name>.index.json`
    where several), else None (the catalogue is then the items the file names)."""
    path = index_path if index_path is not None else own_index_path(
        folder, "*.index*.json", preferred=f"{lcrec_name(folder)}.index.json")
    index = SIDIndex.load(path) if path is not None else None
    return read_lcrec(folder, index.num_items if index else None), index
