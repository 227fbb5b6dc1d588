"""A catalogue ready for decoding: split data + SID index + vocabulary + trie, from one data spec.

A data spec is a folder (format detected from its files) or the name `ml-100k` (MovieLens-100K
from the RecBole wheel). The index is, in this order: `index_dir/index.json` where it exists (e.g.
written by `recspec data build-sids --out`), else the folder's own index file, else SIDs built by
residual k-means and saved as `index_dir/index.json`, so a checkpoint always meets the index it was
trained on. Items sharing a SID are told apart when the index is read (`SIDIndex.load`).
"""

from __future__ import annotations

import functools
import glob
import os
from dataclasses import dataclass

import numpy as np
import torch

from recspec.data.datasets import (SEQUENTIAL_FILES, SplitData, find_file, lcrec_name, own_index_path,
                                   read_lcrec, read_sequential)
from recspec.data.popularity import popularity_prior
from recspec.data.recbole import find_ml100k, read_recbole, recbole_items
from recspec.data.sid_build import build_sids, item_vectors_from_interactions
from recspec.data.sids import SIDIndex
from recspec.data.trie import SIDTrie, build_trie
from recspec.data.vocab import Vocab
from recspec.errors import DataError

INDEX_FILE = "index.json"  # the index kept in an --index-dir


@dataclass(frozen=True)
class Catalog:
    data: SplitData
    index: SIDIndex
    vocab: Vocab
    trie: SIDTrie
    index_path: str | None  # where the index was read from or written to

    @functools.cached_property
    def popularity(self) -> torch.Tensor:
        """(S,) log P(trie state | its parent) from the training interactions: the trie drafter's prior,
        computed once per catalogue however many engines are built on it."""
        return popularity_prior(self.trie, self.data.train)


@dataclass(frozen=True)
class SIDBuild:
    """How SIDs are built for a catalogue that has none (or by `recspec data build-sids`)."""

    levels: int = 3  # code levels before collision handling
    codebook_size: int = 0  # codes per level; 0: sized from the catalogue (sid_build.codebook_for)
    dim: int = 32  # item-vector dimensions from co-occurrence
    seed: int = 0


def detect_format(folder: str) -> str:
    """'sequential' | 'lcrec' | 'recbole' from the files a folder holds."""
    if all(os.path.isfile(os.path.join(folder, f)) for f in SEQUENTIAL_FILES):
        return "sequential"
    if glob.glob(os.path.join(folder, "*.inter.json")):
        return "lcrec"
    if glob.glob(os.path.join(folder, "*.inter")):
        return "recbole"
    raise DataError(f"{folder}: no known data files (sequential_*.txt, *.inter.json or RecBole *.inter)")


def data_folder(spec: str) -> str:
    """The folder of a data spec ('ml-100k': the RecBole wheel's copy)."""
    folder = find_ml100k() if spec == "ml-100k" else spec
    if not os.path.isdir(folder):
        raise DataError(f"{spec}: no such data folder (or use the built-in name 'ml-100k')")
    return folder


def own_index(folder: str, fmt: str) -> str | None:
    """The index file a data folder ships, None without one."""
    if fmt == "sequential":
        return own_index_path(folder, "*.index.json")
    if fmt == "lcrec":
        return own_index_path(folder, "*.index*.json", preferred=f"{lcrec_name(folder)}.index.json")
    name = os.path.basename(find_file(folder, "*.inter"))[: -len(".inter")]
    path = os.path.join(folder, f"{name}.index.json")
    return path if os.path.isfile(path) else None


def read_data(folder: str, fmt: str, split: str = "loo", num_items: int | None = None) -> SplitData:
    """The interactions of a folder, split; num_items: the index's size (None: the items the files name;
    RecBole catalogues are always the items of the .inter file). `split` is RecBole's ("loo" | "temporal")."""
    if fmt == "sequential":
        return read_sequential(folder, num_items)
    if fmt == "lcrec":
        return read_lcrec(folder, num_items)
    return read_recbole(folder, split=split)


def open_catalog(spec: str, index_dir: str | None = None, split: str = "loo", build: SIDBuild = SIDBuild()) -> Catalog:
    """Load a data spec with its index (see the module docstring); build and save SIDs when there is none."""
    folder = data_folder(spec)
    fmt = detect_format(folder)
    cached = os.path.join(index_dir, INDEX_FILE) if index_dir else None
    index_path = cached if cached and os.path.isfile(cached) else own_index(folder, fmt)
    index = SIDIndex.load(index_path) if index_path else None
    data = read_data(folder, fmt, split, index.num_items if index and fmt != "recbole" else None)
    if index is None:
        index = build_index(folder, fmt, data, build)
        if cached:
            index.save(cached)
        index_path = cached
    if index.num_items != data.num_items:
        raise DataError(f"{index_path}: {index.num_items} items, but the interactions name {data.num_items} items")
    vocab = Vocab.for_index(index)
    return Catalog(data, index, vocab, build_trie(index, vocab), index_path)


def build_index(folder: str, fmt: str, data: SplitData, build: SIDBuild) -> SIDIndex:
    """RQ-KMeans SIDs from the training sequences' co-occurrence vectors, plus item classes (genres)
    where RecBole files have them; any index the folder has is not read."""
    side = None
    if fmt == "recbole":
        items = recbole_items(folder)
        side = items.class_multi_hot() if items.classes and any(items.classes) else None
    vecs = item_vectors_from_interactions(data.train, data.num_items, dim=build.dim, seed=build.seed,
                                          side_features=side)
    return build_sids(np.asarray(vecs), levels=build.levels, codebook_size=build.codebook_size, seed=build.seed)
