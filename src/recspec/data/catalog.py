"""A catalogue ready for decoding: split data + SID index + vocabulary + trie, from one data spec.

A data spec is a folder (format detected from its files) or the name `ml-100k` (MovieLens-100K
from the RecBole wheel). Catalogues without an index get SIDs built by residual k-means, saved
next to the run (`index_dir`) and reused, so a checkpoint always meets the index it was trained on.
"""

from __future__ import annotations

import functools
import glob
import os
from dataclasses import dataclass

import numpy as np
import torch

from recspec.data.datasets import (SEQUENTIAL_FILES, SplitData, find_ml100k, load_lcrec, load_recbole,
                                   load_sequential, recbole_items)
from recspec.data.sids import SIDIndex, build_sids, item_vectors_from_interactions
from recspec.data.trie import SIDTrie, build_trie
from recspec.data.vocab import Vocab
from recspec.errors import DataError


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
        from recspec.decoding.drafters.trie_drafter import popularity_prior  # decoding builds on data, not back

        return popularity_prior(self.trie, self.data.train)


@dataclass(frozen=True)
class SIDBuild:
    """How SIDs are built for a catalogue that has none."""

    levels: int = 3  # code levels before collision handling
    codebook_size: int = 16  # codes per level
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


def open_catalog(spec: str, index_dir: str | None = None, split: str = "loo", build: SIDBuild = SIDBuild()) -> Catalog:
    """Load a data spec; build and save SIDs under index_dir when the data has no index."""
    folder = find_ml100k() if spec == "ml-100k" else spec
    if not os.path.isdir(folder):
        raise DataError(f"{spec}: no such data folder (or use the built-in name 'ml-100k')")
    fmt = detect_format(folder)
    index_path = None
    if fmt == "sequential":
        data, index = load_sequential(folder)
    elif fmt == "lcrec":
        data, index = load_lcrec(folder)
    else:
        cached = os.path.join(index_dir, "index.json") if index_dir else None
        have = cached if cached and os.path.isfile(cached) else None
        data, index = load_recbole(folder, split=split, index_path=have)
        index_path = have
        if index is None:
            index = build_index(folder, data, build)
            if cached:
                index.save(cached)
                index_path = cached
    vocab = Vocab.for_index(index)
    return Catalog(data, index, vocab, build_trie(index, vocab), index_path)


def build_index(folder: str, data: SplitData, build: SIDBuild) -> SIDIndex:
    """RQ-KMeans SIDs from co-occurrence vectors, plus item classes (genres) where the files have them."""
    items = recbole_items(folder)
    side = items.class_multi_hot() if items.classes and any(items.classes) else None
    vecs = item_vectors_from_interactions(data.train, data.num_items, dim=build.dim, seed=build.seed,
                                          side_features=side)
    return build_sids(np.asarray(vecs), levels=build.levels, codebook_size=build.codebook_size, seed=build.seed)
