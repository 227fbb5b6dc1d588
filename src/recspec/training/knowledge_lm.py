"""The knowledge text model: a causal LM of our architecture that writes an item's description from its
title, brand and categories (data/knowledge.py), trained on the old items only.

Data: each old item with a description is one row, prompt + output tokens (data/knowledge.py's encoding,
the one generation uses); the loss is next-token cross-entropy on the output tokens only (the
description and its <eos>), the prompt is context (`knowledge_windows`). Items with an empty description
have no target and are left out. Validation logs the same loss on the new items' outputs, or on the
`heldout_ids` given (e.g. `KnowledgeItems.validation_split`'s held-out old items, training on the rest).

Everything else is the text LM's (training/text_lm.py, `train_windows_lm`): the shared loop's optimiser,
schedule and resume, a fixed number of steps, checkpoints `last/` and `best/` with role "text" and the
tokenizer's fingerprint, tokenizer.json beside them, so `load_text_lm` loads the result. `best/` is
kept by the held-out loss: by default the new items', so it has seen their scores and a quality gate
scores the final weights (the model returned, out_dir/last), never best/; with old validation items as
`heldout_ids`, best/ is early stopping that never saw the new items.

cfg.max_len is a guard here, not a cut: the encoding already cut prompts and outputs, and a row longer
than cfg.max_len (or than the model's max_positions) is refused rather than cut a second time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import torch

from recspec.config import ModelConfig
from recspec.data.knowledge import KnowledgeItems, sequences
from recspec.data.text import TextTokenizer
from recspec.errors import DataError
from recspec.models.decoder import Decoder
from recspec.training.text_lm import TextLMConfig, TextLMResult, text_windows, train_windows_lm
from recspec.training.windows import Windows


def knowledge_windows(items: KnowledgeItems, ids: Iterable[int], max_len: int | None = None,
                      prompt_loss: bool = False) -> Windows:
    """The items of `ids` that have an output -> (N, Tmax) prompt + output tokens, labels on the output only
    (prompt_loss: on every token after <bos>). max_len: refuse a row longer than this (None: no limit)."""
    scored = items.scored(ids)
    if not scored:
        raise DataError("no knowledge items with a description among those given")
    rows, starts = sequences(items.pairs(scored))
    if max_len is not None:
        long = [(i, len(r)) for i, r in zip(scored, rows) if len(r) > max_len]
        if long:
            raise ValueError(f"item {long[0][0]}: {long[0][1]} prompt + output tokens > max_len {max_len} "
                             f"({len(long)} such items); raise max_len or encode with smaller max_prompt/max_output")
    return text_windows(rows, [1] * len(rows) if prompt_loss else starts)


def train_knowledge_lm(items: KnowledgeItems, tokenizer: TextTokenizer, model_cfg: ModelConfig, cfg: TextLMConfig,
                       out_dir: str | os.PathLike, dataset: str = "items", on_log: Callable[[dict], None] | None = None,
                       progress: bool = False, device: str | torch.device = "cpu",
                       prompt_loss: bool = False, train_ids: Iterable[int] | None = None,
                       heldout_ids: Iterable[int] | None = None) -> tuple[Decoder, TextLMResult]:
    """Train a fresh Decoder(model_cfg), initialised from cfg.seed, on the old items' descriptions given their
    prompts (resuming from out_dir/last where it exists); writes tokenizer.json to out_dir. prompt_loss: the
    loss also on the prompt tokens. train_ids / heldout_ids: the items trained on / validated on (None: the old /
    the new items). -> (the final model in eval mode, its losses: train_loss on the training windows (their
    outputs, and prompts where prompt_loss), heldout_loss on the held-out items' outputs)."""
    limit = min(cfg.max_len, model_cfg.max_positions)
    train = knowledge_windows(items, items.split.old if train_ids is None else train_ids, limit, prompt_loss)
    heldout = knowledge_windows(items, items.split.new if heldout_ids is None else heldout_ids, limit)
    return train_windows_lm(train, heldout, tokenizer, model_cfg, cfg, out_dir, dataset, on_log, progress, device)
