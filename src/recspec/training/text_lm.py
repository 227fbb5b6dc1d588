"""A small causal LM of our architecture (models/decoder.py) on item texts: the tiny text path.

Data: every old item's text encoded as `<bos> tokens <eos>` (data/text.py: cut to cfg.max_len, no
`<eos>` where cut), one sequence per item, right-padded; the loss is next-token cross-entropy at every
real position (`text_windows`). Held out: the new items' texts, never seen by the tokenizer either.
`train_windows_lm` is the same run on windows the caller built: training/knowledge_lm.py passes
prompt + description rows whose loss is on the description only (`text_windows(rows, targets_from)`).

The optimiser, schedule, checkpoints and resume are the shared loop's (loop.py): AdamW, linear
warm-up then cosine decay over cfg.steps optimiser steps, fixed up front (no clock: the config has
no time limit). Validation (every cfg.eval_every steps, else once per pass over the old items, and
after the last step) logs the mean per-token loss on old and new items and keeps `best/` by the new
items' loss. The batch order of pass e is drawn from numpy's generator seeded with (cfg.seed, e).

On disk (out_dir): `last/`, `best/` are checkpoint folders (models/hf.py: config.json,
model.safetensors, recspec.json) whose recspec.json vocabulary is `text_vocab(tokenizer)` (the three
specials + one "level" of BPE tokens) and whose fingerprint is the tokenizer's; `tokenizer.json` sits
in out_dir beside them, and `load_text_lm` refuses a checkpoint whose tokenizer does not match.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recspec.config import PRECISIONS, ModelConfig
from recspec.data.text import MAX_LEN, TextCorpus, TextTokenizer
from recspec.data.vocab import PAD, SPECIALS, Vocab
from recspec.errors import CheckpointError, DataError
from recspec.models.decoder import Decoder
from recspec.models.hf import load_checkpoint
from recspec.training.loop import RunInfo, run_resumable
from recspec.training.train import WindowLoop, data_hash, next_token_loss
from recspec.training.windows import IGNORE, Windows

ROLE = "text"  # recspec.json role of a text LM checkpoint
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class TextLMConfig:
    """One training run of a text LM (read by the shared loop, loop.py)."""

    steps: int = 300  # optimiser steps of the whole schedule, fixed up front (cosine decay ends here)
    batch_size: int = 32  # item texts per optimiser step
    lr: float = 3e-3  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 20  # linear warm-up before the cosine decay
    grad_clip: float = 1.0  # max gradient norm
    max_len: int = MAX_LEN  # tokens per item text, <bos> included (longer texts are cut)
    eval_every: int = 0  # validation every N steps (0: once per pass over the old items, and at the end)
    precision: str = "auto"  # "fp32", "bf16" (autocast per step), "auto": bf16 on a GPU
    seed: int = 0  # initial weights and batch order
    threads: int = 0  # torch CPU threads (0: torch's default)
    optimizer_state: bool = True  # keep AdamW's state in last/ so the run can resume

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.max_len < 2:
            raise ValueError("steps and batch_size must be >= 1 and max_len >= 2")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    # fixed here, read by the shared loop: a text run is a step count, never a clock
    epochs = property(lambda self: 0)
    max_steps = property(lambda self: 0)
    time_limit_s = property(lambda self: 0.0)
    patience = property(lambda self: 0)


@dataclass(frozen=True)
class TextLMResult:
    steps: int  # optimiser steps done, resumed ones included
    train_loss_before: float  # mean per-token loss of the initial weights on the old items
    heldout_loss_before: float  # ... on the new items
    train_loss: float  # the same for the final weights (out_dir/last)
    heldout_loss: float
    checkpoint: str  # out_dir/last (the final weights; best/ holds the lowest held-out loss)
    tokens_per_s: float  # training tokens per second of optimiser steps


def text_vocab(tokenizer: TextTokenizer) -> Vocab:
    """The checkpoint vocabulary of a text LM: the specials, then the BPE tokens as one level "bpe"."""
    return Vocab(level_sizes=(tokenizer.vocab_size - len(SPECIALS),), prefixes=("bpe",))


def text_windows(rows: list[list[int]], targets_from: Sequence[int] | None = None) -> Windows:
    """Encoded texts -> (N, Tmax) tokens right-padded with PAD, labels = next token (IGNORE past the end).
    targets_from (N,): index of each row's first target token (a knowledge item's first output token);
    labels before it are IGNORE, so its prompt is context only. None: 1, every token after `<bos>`."""
    if not rows:
        raise DataError("no item texts to train or score on")
    starts = [1] * len(rows) if targets_from is None else list(targets_from)
    if targets_from is not None and (len(starts) != len(rows)
                                     or any(not 1 <= s < len(r) for s, r in zip(starts, rows))):
        raise ValueError(f"targets_from needs one start in [1, len(row)) per row ({len(rows)} rows)")
    T = max(len(r) for r in rows)
    tokens = np.full((len(rows), T), PAD, dtype=np.int64)
    labels = np.full((len(rows), T), IGNORE, dtype=np.int64)
    for i, (r, s) in enumerate(zip(rows, starts)):
        tokens[i, :len(r)] = r
        labels[i, s - 1:len(r) - 1] = r[s:]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    return Windows(tokens=torch.from_numpy(tokens), labels=torch.from_numpy(labels), lengths=lengths)


@torch.no_grad()
def sequence_loss(model: Decoder, windows: Windows, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats per predicted token) of `model` over every window, in eval mode."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(windows), batch_size):
        tokens, labels = (x.to(device) for x in windows.batch(torch.arange(s, min(s + batch_size, len(windows)))))
        n = int((labels != IGNORE).sum())  # host sync: scoring only
        total += float(next_token_loss(model, tokens, labels)) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


class _TextTrainer(WindowLoop):
    """Old items' texts as batches, next-token cross-entropy, validation loss on old and new items."""

    metric = "neg_heldout_loss"  # the loop keeps the highest: minus the new items' loss

    def __init__(self, model: Decoder, train: Windows, heldout: Windows, tokenizer: TextTokenizer,
                 cfg: TextLMConfig, out_dir: str, dataset: str, on_log: Callable[[dict], None]):
        self.windows, self.heldout = train, heldout
        self.latest: dict | None = None  # the newest validation's values
        info = RunInfo(text_vocab(tokenizer), tokenizer.fingerprint(), ROLE, dataset, data_hash(train))
        super().__init__(model, cfg, out_dir, info, math.ceil(len(train) / cfg.batch_size), on_log)

    def evaluate(self) -> dict:
        train, heldout = sequence_loss(self.model, self.windows), sequence_loss(self.model, self.heldout)
        self.latest = {"train_loss": train, "heldout_loss": heldout, self.metric: -heldout}
        return self.latest

    def final_losses(self) -> dict:
        """The last validation's values where it ran on the current weights, else a fresh one."""
        return self.latest if self.validated_step == self.state.step else self.evaluate()


def save_tokenizer(tokenizer: TextTokenizer, out_dir: str) -> None:
    """out_dir/tokenizer.json; refused where out_dir already holds another tokenizer (its checkpoints' own)."""
    path = os.path.join(out_dir, TOKENIZER_FILE)
    if os.path.isfile(path) and TextTokenizer.load(path).fingerprint() != tokenizer.fingerprint():
        raise CheckpointError(f"{path}: a different tokenizer; use another out_dir or delete it to start over")
    tokenizer.save(path)


def train_text_lm(corpus: TextCorpus, tokenizer: TextTokenizer, model_cfg: ModelConfig, cfg: TextLMConfig,
                  out_dir: str | os.PathLike, dataset: str = "items", on_log: Callable[[dict], None] | None = None,
                  progress: bool = False, device: str | torch.device = "cpu") -> tuple[Decoder, TextLMResult]:
    """Train a fresh Decoder(model_cfg) on `device`, initialised from cfg.seed, on the corpus's old items
    (resuming from out_dir/last where it exists); writes tokenizer.json to out_dir. -> (the trained model,
    its losses)."""
    train = text_windows(tokenizer.encode_many(corpus.old_texts(), cfg.max_len))
    heldout = text_windows(tokenizer.encode_many(corpus.new_texts(), cfg.max_len))
    return train_windows_lm(train, heldout, tokenizer, model_cfg, cfg, out_dir, dataset, on_log, progress, device)


def train_windows_lm(train: Windows, heldout: Windows, tokenizer: TextTokenizer, model_cfg: ModelConfig,
                     cfg: TextLMConfig, out_dir: str | os.PathLike, dataset: str = "items",
                     on_log: Callable[[dict], None] | None = None, progress: bool = False,
                     device: str | torch.device = "cpu") -> tuple[Decoder, TextLMResult]:
    """`train_text_lm` on windows built by the caller (`text_windows`): train on `train`, validate on both."""
    if model_cfg.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"model vocab_size {model_cfg.vocab_size} != tokenizer's {tokenizer.vocab_size}")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    save_tokenizer(tokenizer, out_dir)
    torch.manual_seed(cfg.seed)
    model = Decoder(model_cfg).to(device)
    before = sequence_loss(model, train), sequence_loss(model, heldout)
    loop, _ = run_resumable(lambda: _TextTrainer(model, train, heldout, tokenizer, cfg, out_dir, dataset,
                                                 on_log or (lambda _: None)), cfg.threads, progress)
    model.eval()
    final = loop.final_losses()
    result = TextLMResult(steps=loop.state.step, train_loss_before=before[0], heldout_loss_before=before[1],
                          train_loss=final["train_loss"], heldout_loss=final["heldout_loss"],
                          checkpoint=os.path.join(out_dir, "last"), tokens_per_s=loop.tokens / max(loop.train_s, 1e-9))
    return model, result


def load_text_lm(folder: str | os.PathLike, device="cpu") -> tuple[Decoder, TextTokenizer]:
    """A text LM checkpoint folder (out_dir/last or best) and the tokenizer.json in it or the folder above;
    refused where the checkpoint was trained with another tokenizer."""
    folder = os.fspath(folder)
    paths = [os.path.join(f, TOKENIZER_FILE) for f in (folder, os.path.dirname(os.path.abspath(folder)))]
    found = [p for p in paths if os.path.isfile(p)]
    if not found:
        raise CheckpointError(f"{folder}: no {TOKENIZER_FILE} in it or the folder above")
    tokenizer = TextTokenizer.load(found[0])
    model, meta = load_checkpoint(folder, device=device)
    if meta is None or meta.role != ROLE:
        raise CheckpointError(f"{folder}: not a text LM checkpoint (role {meta.role if meta else None!r})")
    if meta.index_fingerprint != tokenizer.fingerprint() or meta.vocab != text_vocab(tokenizer):
        raise CheckpointError(f"{folder}: trained with another tokenizer than {found[0]} "
                              f"(fingerprint {meta.index_fingerprint} != {tokenizer.fingerprint()})")
    return model, tokenizer
