"""The knowledge task on item text (LASER's item side): from an item's title, brand and categories, generate
its description.

Texts. An item's prompt text is its non-empty fields among `PROMPT_FIELDS` (title, brand, categories),
normalised as data/text.py does and joined by FIELD_SEP " | "; its output text is its normalised
description. `knowledge_text(prompt, description)` = prompt + " | " + description is then exactly the
item's text of data/text.py (`item_text`), so the tokenizer trained on the old items' knowledge texts is
the text path's tokenizer (`train_knowledge_tokenizer` == `train_tokenizer` of the same item.json).
An item whose prompt fields are all empty is an error: there is nothing to generate from.

Tokens, defined once here for training, scoring and generation alike:
    prompt = [<bos>] + tok(prompt_text + " |")
    output = tok(" " + description) + [<eos>]
`tok` is the byte-level BPE without normalisation or specials (`piece_ids`). Why the split sits before
the space: the byte-level pre-tokenizer (GPT-2's regex, add_prefix_space=False) makes " |" a piece of
its own (a run of punctuation with one leading space, ended by the space after it) and the space before
the description the start of the description's first piece, and BPE never merges across pieces, so
    prompt[1:] + output[:-1] == tok(prompt_text + " | " + description)
token for token: a prompt followed by its output is the item's text as the text path encodes it, and a
generation that starts after the prompt continues exactly where training's targets start
(tests/data/test_knowledge.py checks it on every item at hand).

Lengths. A prompt longer than `max_prompt` tokens keeps <bos>, its first tokens and its closing
tok(" |") (the generation must still start after the separator); an output longer than `max_output`
keeps its first max_output tokens and has no <eos> (the description does not end there).

Empty descriptions (639 of Office's 2,420 items). Such an item has a prompt and an empty output: it is
generated for (LASER writes knowledge for every item) but has no target, so it takes no part in any
training loss, n-gram count or perplexity (`KnowledgeItems.scored`). An [<eos>]-only target would
teach the model to stop at once on a quarter of the items, which is not the task.

Old / new split: data/text.py's `split_items` (sha256 order of the ids): the tokenizer, the LM and the
n-gram baseline see the old items only; the new items are held out. Choices made while training (steps,
model size, n-gram order) use `KnowledgeItems.validation_split`, a second split of the old items.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from recspec.data.text import (FIELD_SEP, OLD_FRACTION, ItemSplit, TextTokenizer, item_fields, left_pad,
                               read_item_json, split_items)
from recspec.data.vocab import BOS, EOS, Prompts
from recspec.errors import DataError

PROMPT_FIELDS = ("title", "brand", "categories")  # joined in this order, empty ones left out
OUTPUT_FIELD = "description"
PROMPT_END = " |"  # FIELD_SEP without its trailing space: that space opens the output's first token
MAX_PROMPT = 96  # default prompt tokens, <bos> and " |" included (Office: 95% of prompts fit)
MAX_OUTPUT = 128  # default output tokens, <eos> included where it fits (Office: median description 168)


# --- texts ----------------------------------------------------------------------------------------
def knowledge_text(prompt: str, description: str) -> str:
    """prompt + " | " + description (the prompt alone where the description is empty): data/text.py's item text."""
    return prompt + FIELD_SEP + description if description else prompt


@dataclass(frozen=True)
class KnowledgeCorpus:
    """Prompt and output texts of every item, and the old/new split."""

    ids: tuple[int, ...]  # N item ids, increasing
    prompts: tuple[str, ...]  # N prompt texts: title | brand | categories (non-empty ones)
    descriptions: tuple[str, ...]  # N normalised descriptions ("" where empty)
    categories: tuple[str, ...]  # N normalised categories strings ("" where empty)
    split: ItemSplit

    def old_texts(self) -> list[str]:
        """The old items' knowledge texts (the tokenizer's training texts), in id order."""
        row = {i: r for r, i in enumerate(self.ids)}
        return [knowledge_text(self.prompts[row[i]], self.descriptions[row[i]]) for i in self.split.old]


def load_knowledge_corpus(path: str | os.PathLike, old_fraction: float = OLD_FRACTION,
                          seed: int = 0) -> KnowledgeCorpus:
    """`*.item.json` (or its folder) -> prompts, descriptions and categories of every item, and the split."""
    file, raw = read_item_json(path)
    ids, prompts, descriptions, categories = [], [], [], []
    for i, meta in raw.items():
        fields = item_fields(meta, f"{file}: item {i}", PROMPT_FIELDS + (OUTPUT_FIELD,))
        prompt = FIELD_SEP.join(fields[f] for f in PROMPT_FIELDS if fields[f])
        if not prompt:
            raise DataError(f"{file}: item {i}: no prompt text ({', '.join(PROMPT_FIELDS)} all empty)")
        ids.append(i)
        prompts.append(prompt)
        descriptions.append(fields[OUTPUT_FIELD])
        categories.append(fields["categories"])
    return KnowledgeCorpus(ids=tuple(ids), prompts=tuple(prompts), descriptions=tuple(descriptions),
                           categories=tuple(categories), split=split_items(ids, old_fraction, seed))


def train_knowledge_tokenizer(corpus: KnowledgeCorpus, vocab_size: int | None = None) -> TextTokenizer:
    """Byte-level BPE on the old items' knowledge texts only (`TextTokenizer.train`)."""
    return TextTokenizer.train(corpus.old_texts(), vocab_size)


# --- tokens ---------------------------------------------------------------------------------------
def piece_ids(tokenizer: TextTokenizer, text: str) -> list[int]:
    """BPE ids of `text` as given: no normalisation (a leading space is kept), no specials added."""
    return tokenizer.tok.encode(text, add_special_tokens=False).ids


def encode_prompt(tokenizer: TextTokenizer, prompt: str, max_prompt: int = MAX_PROMPT) -> list[int]:
    """[<bos>] + tok(prompt + " |"); longer than max_prompt: <bos>, the first tokens, tok(" |")."""
    end = piece_ids(tokenizer, PROMPT_END)
    if max_prompt < len(end) + 2:
        raise ValueError(f"max_prompt must be >= {len(end) + 2} (<bos>, a token and {PROMPT_END!r}), got {max_prompt}")
    ids = [BOS] + piece_ids(tokenizer, prompt + PROMPT_END)
    if len(ids) <= max_prompt:
        return ids
    if ids[-len(end):] != end:  # " |" is a piece of its own after a normalised prompt (module docstring)
        raise DataError(f"prompt {prompt[:40]!r}: does not end in the tokens of {PROMPT_END!r}")
    return ids[:max_prompt - len(end)] + end


def encode_output(tokenizer: TextTokenizer, description: str, max_output: int = MAX_OUTPUT) -> list[int]:
    """tok(" " + description) + [<eos>], cut to its first max_output tokens (no <eos> where cut); [] if empty."""
    if max_output < 1:
        raise ValueError(f"max_output must be >= 1, got {max_output}")
    if not description:
        return []
    return (piece_ids(tokenizer, " " + description) + [EOS])[:max_output]


@dataclass(frozen=True)
class KnowledgeItems:
    """Every item's prompt and output tokens (module docstring), its categories, and the old/new split."""

    ids: tuple[int, ...]  # N item ids, increasing
    prompts: tuple[tuple[int, ...], ...]  # N rows: [<bos>] + tok(prompt + " |"), 2..max_prompt tokens
    outputs: tuple[tuple[int, ...], ...]  # N rows: tok(" " + description) + [<eos>], <= max_output; () if empty
    categories: tuple[str, ...]  # N normalised categories strings (item grouping)
    split: ItemSplit

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not (len(self.prompts) == len(self.outputs) == len(self.categories) == n):
            raise ValueError(f"KnowledgeItems: {n} ids but {len(self.prompts)} prompts, {len(self.outputs)} outputs "
                             f"and {len(self.categories)} categories")
        object.__setattr__(self, "_rows", {i: r for r, i in enumerate(self.ids)})  # id -> row; derived, no field

    def row(self, item: int) -> int:
        """Item id -> its row in ids / prompts / outputs."""
        if item not in self._rows:
            raise DataError(f"item {item}: not among the {len(self.ids)} knowledge items")
        return self._rows[item]

    def scored(self, ids: Iterable[int]) -> tuple[int, ...]:
        """The items among `ids` with an output (a non-empty description): those that train and are scored."""
        return tuple(i for i in ids if self.outputs[self.row(i)])

    def validation_split(self, fraction: float = 0.1, seed: int = 1) -> ItemSplit:
        """The old scored items split again (data/text.py's `split_items`, sha256 order under `seed`): `old` trains,
        `new` validates (early stopping, model and n-gram order selection), so the new items are scored once."""
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        split = split_items(self.scored(self.split.old), 1.0 - fraction, seed)
        if not split.old or not split.new:
            raise DataError(f"{len(self.scored(self.split.old))} old scored items: too few to hold out {fraction:.0%}")
        return split

    def pairs(self, ids: Iterable[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """(prompt tokens, output tokens) of each item of `ids`, in that order."""
        return [(self.prompts[self.row(i)], self.outputs[self.row(i)]) for i in ids]

    def prompt_batch(self, ids: Iterable[int]) -> Prompts:
        """The prompts of `ids` for generation: (B, T) left-padded with PAD and (B,) lengths (data/text.py's
        `left_pad`, vocab.build_prompts' convention); a generation continues where an output starts."""
        rows = [self.prompts[self.row(i)] for i in ids]
        if not rows:
            raise DataError("no items to build prompts for")
        return left_pad(rows)


def encode_knowledge(corpus: KnowledgeCorpus, tokenizer: TextTokenizer, max_prompt: int = MAX_PROMPT,
                     max_output: int = MAX_OUTPUT) -> KnowledgeItems:
    """Every item of `corpus` as prompt and output tokens (`encode_prompt`, `encode_output`)."""
    return KnowledgeItems(ids=corpus.ids,
                          prompts=tuple(tuple(encode_prompt(tokenizer, p, max_prompt)) for p in corpus.prompts),
                          outputs=tuple(tuple(encode_output(tokenizer, d, max_output)) for d in corpus.descriptions),
                          categories=corpus.categories, split=corpus.split)


def sequences(pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> tuple[list[list[int]], list[int]]:
    """(prompt, output) pairs -> (prompt + output token rows, each row's first output index = len(prompt))."""
    return [list(p) + list(o) for p, o in pairs], [len(p) for p, _ in pairs]
