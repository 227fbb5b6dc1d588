"""Item text: a corpus of item descriptions, an old/new split of the items, a byte-level BPE tokenizer
trained on the old items only, and prompts cut from item texts (a tiny text path for decoding tests).

Item text. An LC-Rec-style `<name>.item.json` maps item ids to {"title", "description", "brand",
"categories"}. Many descriptions are empty (639 of Office's 2,420 items), so an item's text is its
non-empty fields in the order title, brand, categories, description, joined by " | "
(`ITEM_FIELDS`, `FIELD_SEP`), each normalised by `normalise_text`: HTML entities unescaped
("AT&amp;T" -> "AT&T"), Unicode NFKC, runs of whitespace collapsed to one space, ends stripped.
An item whose fields are all empty is an error, not an empty text.

Old / new split (`split_items`). Items are ordered by sha256 of "<seed>:<item id>" and the first
round(old_fraction * n) are old, the rest new: a function of the ids and the seed only, never of the
text, so the same ids give the same split whatever the descriptions say. A hash rather than id order:
LC-Rec ids follow the catalogue's crawl order (Office's first ids are all telephones), so a cut by id
would hold whole categories out.

Tokenizer (`TextTokenizer`). Byte-level BPE of the `tokenizers` library (any string round-trips:
decode(encode(x)) == normalise_text(x)), trained on the old items' texts only. Special tokens
(ids fixed, those of data/vocab.py): `<pad>` = PAD = 0, `<bos>` = BOS = 1, `<eos>` = EOS = 2; the
256 byte symbols follow, then the merges. The strings "<pad>", "<bos>", "<eos>" inside an item's
text are ordinary text, never these ids. An item encodes as `<bos> text <eos>`; a text longer than
`max_len` tokens is cut to its first `max_len` (`<bos>` included) and gets no `<eos>`: it does not
end there. Saved as one tokenizer.json.

`tokenizers` is imported inside the functions that use it (the `text` extra of pyproject.toml), so the
rest of the package imports without it.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from recspec.data.datasets import find_file, load_json
from recspec.data.vocab import BOS, EOS, PAD, SPECIALS, Prompts
from recspec.errors import CheckpointError, DataError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ITEM_FIELDS = ("title", "brand", "categories", "description")  # joined in this order, empty ones left out
FIELD_SEP = " | "
OLD_FRACTION = 0.8  # share of items that are old (the tokenizer's and the LM's training items)
BYTE_SYMBOLS = 256  # byte-level BPE's initial alphabet
MAX_VOCAB = 1024  # default vocabulary cap: a CPU model's embedding and LM head (V x C each) stay small
MAX_LEN = 128  # default tokens per encoded item, <bos> (and <eos> when it fits) included


# --- item text ------------------------------------------------------------------------------------
def normalise_text(text: str) -> str:
    """HTML entities unescaped, NFKC, whitespace runs -> one space, ends stripped."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", html.unescape(text))).strip()


def item_fields(meta: object, where: str, fields: Sequence[str] = ITEM_FIELDS) -> dict[str, str]:
    """One item's {"title", "brand", ...} -> {field: normalised value} for `fields` ("" where missing or empty)."""
    if not isinstance(meta, dict):
        raise DataError(f"{where}: expected an object with {', '.join(ITEM_FIELDS)}, got {type(meta).__name__}")
    values = {}
    for field in fields:
        value = meta.get(field) or ""
        if not isinstance(value, str):
            raise DataError(f"{where}: field {field!r} is a {type(value).__name__}, not a string")
        values[field] = normalise_text(value)
    return values


def item_text(meta: object, where: str) -> str:
    """One item's {"title", "brand", "categories", "description", ...} -> its normalised text."""
    parts = [v for v in item_fields(meta, where).values() if v]
    if not parts:
        raise DataError(f"{where}: no text ({', '.join(ITEM_FIELDS)} all empty)")
    return FIELD_SEP.join(parts)


def item_json_path(path: str | os.PathLike) -> str:
    """A `*.item.json` file, or the folder holding exactly one."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return find_file(path, "*.item.json")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file or folder (expected a *.item.json or a folder holding one)")
    return path


def read_item_json(path: str | os.PathLike) -> tuple[str, dict[int, object]]:
    """`*.item.json` (or its folder) -> (the file, {item id: its raw object}), ids in increasing order."""
    file = item_json_path(path)
    items = {}
    for key, meta in load_json(file).items():
        if not str(key).isdigit():
            raise DataError(f"{file}: item id {key!r} is not a non-negative integer")
        items[int(key)] = meta
    if not items:
        raise DataError(f"{file}: no items")
    return file, dict(sorted(items.items()))


def read_item_texts(path: str | os.PathLike) -> dict[int, str]:
    """`*.item.json` (or its folder) -> {item id: text}, ids in increasing order (see the module docstring)."""
    file, items = read_item_json(path)
    return {i: item_text(meta, f"{file}: item {i}") for i, meta in items.items()}


# --- old / new split ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ItemSplit:
    old: tuple[int, ...]  # item ids seen in training (tokenizer and LM), increasing
    new: tuple[int, ...]  # held-out item ids, increasing; disjoint from old


def split_items(ids: Iterable[int], old_fraction: float = OLD_FRACTION, seed: int = 0) -> ItemSplit:
    """The first round(old_fraction * n) ids by sha256("<seed>:<id>") are old, the rest new."""
    if not 0.0 < old_fraction <= 1.0:
        raise ValueError(f"old_fraction must be in (0, 1], got {old_fraction}")
    ids = sorted(set(int(i) for i in ids))
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    n_old = round(old_fraction * len(ids))
    return ItemSplit(old=tuple(sorted(ranked[:n_old])), new=tuple(sorted(ranked[n_old:])))


@dataclass(frozen=True)
class TextCorpus:
    """Item texts and their split: what the tokenizer and the text LM train on (old) and hold out (new)."""

    texts: Mapping[int, str]  # item id -> normalised text
    split: ItemSplit

    def old_texts(self) -> list[str]:
        return [self.texts[i] for i in self.split.old]

    def new_texts(self) -> list[str]:
        return [self.texts[i] for i in self.split.new]


def load_text_corpus(path: str | os.PathLike, old_fraction: float = OLD_FRACTION, seed: int = 0) -> TextCorpus:
    """`read_item_texts` and `split_items` of its ids."""
    texts = read_item_texts(path)
    return TextCorpus(texts=texts, split=split_items(texts, old_fraction, seed))


# --- tokenizer ------------------------------------------------------------------------------------
def default_vocab_size(texts: Sequence[str]) -> int:
    """Specials + 256 bytes + one merge per two distinct whitespace-separated words, at most MAX_VOCAB:
    merges past that mostly spell out words seen once or twice, which a small model cannot learn."""
    words = {w for t in texts for w in t.split()}
    return min(MAX_VOCAB, len(SPECIALS) + BYTE_SYMBOLS + len(words) // 2)


@dataclass(frozen=True)
class TextTokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` with our special tokens at PAD, BOS, EOS."""

    tok: "Tokenizer"

    @staticmethod
    def train(texts: Sequence[str], vocab_size: int | None = None) -> "TextTokenizer":
        """BPE on `texts` (normalised first); vocab_size None: `default_vocab_size`. Merges stop early where
        no pair occurs twice, so `vocab_size` of the result may be smaller. Deterministic."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        texts = [normalise_text(t) for t in texts]
        size = vocab_size or default_vocab_size(texts)
        if size < len(SPECIALS) + BYTE_SYMBOLS:
            raise ValueError(f"vocab_size {size} is below the {len(SPECIALS) + BYTE_SYMBOLS} specials and bytes")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=size, min_frequency=2, special_tokens=list(SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer)
        return TextTokenizer._checked(tok, "trained tokenizer")

    @staticmethod
    def _checked(tok: "Tokenizer", where: str) -> "TextTokenizer":
        ids = [tok.token_to_id(s) for s in SPECIALS]
        if ids != [PAD, BOS, EOS]:
            raise CheckpointError(f"{where}: special tokens {list(SPECIALS)} have ids {ids}, expected {[PAD, BOS, EOS]}")
        tok.encode_special_tokens = True  # "<eos>" in a text is text (not saved in tokenizer.json: set on load)
        return TextTokenizer(tok)

    @staticmethod
    def load(path: str | os.PathLike) -> "TextTokenizer":
        from tokenizers import Tokenizer

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: tokenizer file not found")
        try:
            tok = Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise CheckpointError(f"{path}: not a tokenizers tokenizer.json ({str(e).splitlines()[0]})") from None
        return TextTokenizer._checked(tok, path)

    def save(self, path: str | os.PathLike) -> None:
        path = os.fspath(path)
        self.tok.save(path + ".tmp")
        os.replace(path + ".tmp", path)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def fingerprint(self) -> str:
        """Short sha256 of the serialised tokenizer (a checkpoint records the one it was trained with)."""
        canonical = json.dumps(json.loads(self.tok.to_str()), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def encode(self, text: str, max_len: int = MAX_LEN) -> list[int]:
        """`<bos> tokens <eos>` of normalise_text(text); longer than max_len: its first max_len, no `<eos>`."""
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (<bos> and a token), got {max_len}")
        ids = [BOS] + self.tok.encode(normalise_text(text), add_special_tokens=False).ids + [EOS]
        return ids if len(ids) <= max_len else ids[:max_len]

    def encode_many(self, texts: Iterable[str], max_len: int = MAX_LEN) -> list[list[int]]:
        return [self.encode(t, max_len) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text; special tokens are left out."""
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


def train_tokenizer(corpus: TextCorpus, vocab_size: int | None = None) -> TextTokenizer:
    """The tokenizer of a corpus: BPE on its old items' texts only (new items stay unseen)."""
    return TextTokenizer.train(corpus.old_texts(), vocab_size)


# --- prompts --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextPrompts:
    """Item texts cut into a prompt and the rest a greedy continuation is compared with."""

    prompts: Prompts  # tokens (B, T) left-padded with PAD, lengths (B,): vocab.build_prompts' convention
    rest: tuple[tuple[int, ...], ...]  # B rows: each item's tokens after its prompt (at least one)


def left_pad(rows: Sequence[Sequence[int]]) -> Prompts:
    """Token rows -> Prompts: PAD on the left so every row ends at the last column."""
    T = max(len(r) for r in rows)
    tokens = torch.full((len(rows), T), PAD, dtype=torch.int64)
    for i, r in enumerate(rows):
        tokens[i, T - len(r):] = torch.tensor(list(r), dtype=torch.int64)
    return Prompts(tokens=tokens, lengths=torch.tensor([len(r) for r in rows], dtype=torch.int64))


def text_prompts(encoded: Sequence[Sequence[int]], n: int) -> TextPrompts:
    """Encoded items (`TextTokenizer.encode`) -> prompts of each one's first min(n, len - 1) tokens
    (`<bos>` included), so at least one token is left to continue."""
    if n < 1 or not encoded:
        raise ValueError(f"need n >= 1 and at least one item, got n={n} and {len(encoded)} items")
    short = [i for i, r in enumerate(encoded) if len(r) < 2]
    if short:
        raise DataError(f"encoded item {short[0]}: {len(encoded[short[0]])} token(s); a prompt needs 2 at least")
    cut = [min(n, len(r) - 1) for r in encoded]
    return TextPrompts(prompts=left_pad([r[:c] for r, c in zip(encoded, cut)]),
                       rest=tuple(tuple(int(t) for t in r[c:]) for r, c in zip(encoded, cut)))
