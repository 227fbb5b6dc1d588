"""Knowledge generation (LASER, spec/retrieval-drafting.md): a text LM writes each item's description from
its title | brand | categories, batched and greedy, drafted from retrieval pools of earlier texts.

Pools. One n-gram pool per item group (`POOLS`): "category" (the second-level category), "kmeans"
(k-means over collaborative item embeddings from the interactions, as many groups as categories),
"random" (the category groups' sizes, members dealt at random: the control), "global" (one pool), or
"none" (no drafting: the target's own greedy decoding). A pool starts from the old items' real texts
(`warm`: each item's prompt tail + description, so a lookup right after the prompt's " |" hits) and,
online, learns every generated text of its group between batches (`Pools.sync` rewrites the device
table in place). Requests are scheduled group by group; an item outside the grouping goes to the
nearest group by its embedding (`Grouping.route`).

Own n-grams. With cfg.own the tree gets one more column, the row's own latest match in its prompt and text so
far (`decoding.drafters.retrieval.own_match`): LASER's pool also holds the current prompt and generation.

Verification. "greedy" (k = 1) keeps every text equal to plain greedy decoding; "relaxed" (LASER's
top-k/beta rule, k = 2, beta = 0.1 by default) also keeps a drafted token the target ranks within its top
k above probability beta: faster, not identical, judged downstream (evaluation/knowledge_check.py).

Files. `generate_file` appends one JSON line per item, {"item", "text", "tokens", "group", "target_calls"},
flushed per batch, and a sidecar `<out>.meta.json` with the settings; a rerun skips the items already
written (a torn last line is cut off and redone) and refuses a file written with other settings.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recspec.config import DecodeConfig, EngineConfig, TreeConfig
from recspec.data.datasets import load_json
from recspec.data.knowledge import (MAX_OUTPUT, MAX_PROMPT, KnowledgeItems, encode_knowledge, load_knowledge_corpus,
                                    train_knowledge_tokenizer)
from recspec.data.text import item_json_path
from recspec.data.vocab import BOS, EOS, PAD
from recspec.decoding.constraints import FreeText
from recspec.decoding.engine import SpecEngine, build_engine
from recspec.errors import DataError
from recspec.evaluation.ngram_lm import NGramLM
from recspec.evaluation.temperature import fit_temperature, fold_temperature
from recspec.evaluation.text_gate import knowledge_gate, lm_nll, ngram_nll
from recspec.models.decoder import Decoder
from recspec.models.hf import load_checkpoint, save_checkpoint
from recspec.retrieval.embeddings import item_embeddings
from recspec.retrieval.groups import (Grouping, category_groups, global_group, kmeans_groups, random_groups,
                                     read_item_meta)
from recspec.retrieval.index import DEFAULT_MAX_NODES
from recspec.retrieval.pools import Pools
from recspec.training.knowledge_lm import train_knowledge_lm
from recspec.training.text_lm import load_text_lm

POOLS = ("none", "global", "category", "kmeans", "random")
MODES = ("greedy", "relaxed")


@dataclass(frozen=True)
class KnowledgeConfig:
    """One knowledge generation run."""

    mode: str = "greedy"  # "greedy" (exact) or "relaxed" (top-k/beta)
    pool: str = "category"  # POOLS
    accept_k: int = 2  # relaxed: a drafted token may rank up to k-th under the target ...
    accept_beta: float = 0.1  # ... with a probability above beta
    batch_size: int = 16  # items per batch
    width: int = 4  # draft tree nodes per level (the table's W, the engine's N)
    depth: int = 8  # draft tree levels per round (the table's D, the engine's gamma)
    budget: int = 32  # most draft nodes kept per context's tree
    context: int = 2  # a lookup matches the last `context` tokens, then fewer
    own: bool = True  # one more tree column: the row's own n-gram match in its prompt + text so far
    pool_fraction: float = 1.0  # share of the old items' texts that warm the pools (the pool-size sweep)
    max_nodes: int = DEFAULT_MAX_NODES  # n-gram nodes per group pool before pruning
    online: bool = True  # pools learn each batch's texts (else they hold the warm texts only)
    max_output: int = MAX_OUTPUT  # generated tokens per item, <eos> included
    seed: int = 0  # k-means, random groups, pool subsampling
    cuda_graphs: bool = False  # capture the rounds (CUDA only)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if min(self.batch_size, self.width, self.depth, self.budget, self.context, self.max_output) < 1:
            raise ValueError("batch_size, width, depth, budget, context and max_output must be >= 1")
        if not 0.0 <= self.pool_fraction <= 1.0:
            raise ValueError(f"pool_fraction must lie in [0, 1], got {self.pool_fraction}")
        if self.accept_k < 1 or not 0.0 <= self.accept_beta < 1.0:
            raise ValueError(f"accept_k must be >= 1 and accept_beta in [0, 1), got {self.accept_k}, {self.accept_beta}")

    def settings(self) -> dict:
        """What decides a file's texts (the sidecar; resume refuses a mismatch): all but cuda_graphs."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "cuda_graphs"}


@dataclass(frozen=True)
class Generated:
    item: int
    text: str
    tokens: tuple[int, ...]  # generated tokens, <eos> excluded
    group: int  # the pool it was drafted from (0 with pool "none" / "global")
    target_calls: int


# --- groups ------------------------------------------------------------------------------------------
def collaborative_embeddings(item_meta: Mapping[int, dict], interactions: Mapping[str, Sequence[int]] | None,
                             seed: int = 0) -> np.ndarray | None:
    """(I, d) item embeddings from the interactions {user: item ids in order} (None without any): what the
    k-means groups cluster and what routes an item outside a grouping to its nearest group."""
    seqs = [list(s) for s in (interactions or {}).values()]
    return item_embeddings(seqs, max(item_meta) + 1, seed=seed) if seqs else None


def item_grouping(pool: str, item_meta: Mapping[int, dict], emb: np.ndarray | None, seed: int = 0) -> Grouping | None:
    """The grouping a pool kind names (None for "none"). item_meta: {item id: item.json fields}; emb: the
    `collaborative_embeddings` ("kmeans" needs them; None: groups without centroids)."""
    if pool == "none":
        return None
    items = np.array(sorted(item_meta), dtype=np.int64)
    if pool == "global":
        return global_group(items, emb)
    category = category_groups(dict(item_meta), emb)
    if pool == "category":
        return category
    if pool == "random":
        return random_groups(category, seed, emb)
    if emb is None:
        raise DataError("k-means pools need the interactions (the collaborative item embeddings)")
    return kmeans_groups(emb, category.num_groups, seed)


# --- the generator ----------------------------------------------------------------------------------
class KnowledgeGenerator:
    """Batched generation over a text LM, with pools per group when cfg.pool is not "none"."""

    def __init__(self, model: Decoder, tokenizer, items: KnowledgeItems, cfg: KnowledgeConfig,
                 grouping: Grouping | None = None, item_emb: np.ndarray | None = None):
        """tokenizer: turns generated tokens into text (`decode`); item_emb (I, d): routes items outside the
        grouping to the nearest group."""
        if (grouping is None) != (cfg.pool == "none"):
            raise ValueError(f"pool {cfg.pool!r} {'needs' if grouping is None else 'takes no'} grouping")
        self.model, self.tokenizer, self.items, self.cfg = model, tokenizer, items, cfg
        self.grouping, self.item_emb = grouping, item_emb
        self.device = next(model.parameters()).device
        self.constraint = FreeText(vocab_size=model.cfg.vocab_size, length=cfg.max_output, eos=EOS,
                                   banned_tokens=(PAD, BOS)).to(self.device)
        self.pools = Pools(cfg.context, cfg.depth, cfg.max_nodes) if grouping is not None else None
        self.table = None
        self.engine: SpecEngine | None = None
        self.rebuilds = 0  # tables rebuilt larger after a sync dropped contexts
        self._capacity: int | None = None  # the next table's slots (None: the smallest that holds every context)
        self.last_stats = None  # SpecStats of the last batch

    def group(self, item: int) -> int:
        if self.grouping is None:
            return 0
        emb = None if self.item_emb is None or item >= len(self.item_emb) else self.item_emb[item]
        return self.grouping.route(item, emb)

    def warm(self, ids: Iterable[int]) -> int:
        """Insert the real texts of `ids` (those with a description; cfg.pool_fraction of them, seeded) into
        their groups' pools -> texts inserted. Call before the first `generate`."""
        if self.pools is None:
            return 0
        scored = list(self.items.scored(ids))
        keep = np.random.default_rng(self.cfg.seed).random(len(scored)) < self.cfg.pool_fraction
        chosen = [i for i, k in zip(scored, keep) if k]
        for i in chosen:
            prompt, output = self.items.pairs([i])[0]
            self.pools.insert(self.group(i), list(prompt[-self.cfg.context:]) + list(output))
        self.table, self.engine = None, None  # recompiled by the next batch
        return len(chosen)

    def learn(self, done: Iterable[Generated]) -> None:
        """Each generated text (prompt tail + tokens + <eos>) into its item's group's pool, synced into the table:
        the online update, and the warm-up from another run's texts (e.g. the old items')."""
        if self.pools is None:
            return
        for g in done:
            prompt = self.items.pairs([g.item])[0][0]
            self.pools.insert(self.group(g.item), list(prompt[-self.cfg.context:]) + list(g.tokens) + [EOS])
        if self.table is not None:
            self.pools.sync(self.table)
            if self.pools.dropped:  # the table is full: rebuild it twice as large (the engine recaptures)
                self._capacity = 2 * self.table.capacity
                self.table, self.engine = None, None
                self.rebuilds += 1

    def decode_config(self) -> DecodeConfig:
        c = self.cfg
        engine = EngineConfig(cuda_graphs=c.cuda_graphs,
                              prompt_width=max(map(len, self.items.prompts)) if c.cuda_graphs else None)
        return DecodeConfig(K=1, batch_size=c.batch_size, verify="strict" if c.mode == "greedy" else "topk-beta",
                            accept_k=c.accept_k, accept_beta=c.accept_beta, engine=engine,
                            tree=TreeConfig(draft_beams=c.width + int(c.own), gamma=c.depth, expand=0))

    def share_pools(self, other: "KnowledgeGenerator") -> None:
        """Draft from `other`'s pools and table (e.g. greedy and relaxed runs over one pool)."""
        self.pools, self.table, self.engine = other.pools, other.table, None

    def _engine(self) -> SpecEngine:
        if self.engine is None:
            if self.pools is not None and self.table is None:  # the smallest table holding every context, or
                self.table = self.pools.compile(self.cfg.budget, self.cfg.width, self.cfg.depth,  # twice the last
                                                capacity=self._capacity, device=self.device)
            self.engine = build_engine(self.model, self.constraint, self.decode_config(), self.table)
        return self.engine

    def schedule(self, ids: Iterable[int]) -> list[list[int]]:
        """Batches of cfg.batch_size items, group by group (a batch may end one group and start the next)."""
        order = sorted(ids, key=lambda i: (self.group(i), i))
        return [order[s:s + self.cfg.batch_size] for s in range(0, len(order), self.cfg.batch_size)]

    @torch.no_grad()
    def run_batch(self, ids: Sequence[int]) -> list[Generated]:
        """Generate the texts of `ids` (no pool update)."""
        engine = self._engine()
        groups = [self.group(i) for i in ids]
        if engine.drafter is not None:
            engine.drafter.route(torch.tensor(groups, dtype=torch.long, device=self.device))
        out, stats = engine.run(self.items.prompt_batch(ids).to(self.device))
        self.last_stats = stats  # the run's accepted levels per round (measurement reads them)
        codes, calls = out.codes[:, 0].tolist(), stats.target_calls().tolist()
        return [Generated(i, self.text(toks), tuple(toks), g, int(n))
                for i, g, toks, n in zip(ids, groups, (until_eos(c) for c in codes), calls)]

    def text(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(tokens).strip()

    def generate(self, ids: Iterable[int]) -> Iterator[list[Generated]]:
        """Batch by batch, group by group; the pools learn each batch (cfg.online)."""
        for batch in self.schedule(ids):
            done = self.run_batch(batch)
            if self.cfg.online:
                self.learn(done)
            yield done


def until_eos(tokens: Sequence[int]) -> list[int]:
    """A generated row up to its first <eos> (excluded)."""
    tokens = list(tokens)
    return tokens[:tokens.index(EOS)] if EOS in tokens else tokens


def make_generator(model: Decoder, tokenizer, items: KnowledgeItems, cfg: KnowledgeConfig,
                   item_meta: Mapping[int, dict], interactions: Mapping[str, Sequence[int]] | None = None,
                   warm: Iterable[int] | None = None,
                   generated: Mapping[int, Generated] | None = None) -> KnowledgeGenerator:
    """A generator whose pools (cfg.pool) are warmed with `generated` texts (e.g. `read_done` of the old items'
    file) where given, else with the real texts of `warm` (default: the old items)."""
    emb = collaborative_embeddings(item_meta, interactions, cfg.seed) if cfg.pool != "none" else None
    gen = KnowledgeGenerator(model, tokenizer, items, cfg, item_grouping(cfg.pool, item_meta, emb, cfg.seed), emb)
    if generated is not None:
        gen.learn([generated[i] for i in sorted(generated)])
    else:
        gen.warm(items.split.old if warm is None else warm)
    return gen


# --- data ---------------------------------------------------------------------------------------------
HELD_OUT = 2  # interactions per user left out of the item embeddings: leave-one-out's validation and test


def read_interactions(folder: str | os.PathLike) -> dict[str, list[int]] | None:
    """The folder's `*.inter.json` {user: item ids in time order} without each user's last HELD_OUT items (the
    downstream check's validation and test), for the collaborative item embeddings; None where there is none."""
    found = sorted(glob.glob(os.path.join(os.fspath(folder), "*.inter.json")))
    if not os.path.isdir(folder) or not found:
        return None
    raw = load_json(found[0])
    if not isinstance(raw, dict):
        raise DataError(f"{found[0]}: expected {{user: [item ids]}}")
    return {str(u): [int(i) for i in s[:-HELD_OUT]] for u, s in raw.items() if isinstance(s, list)}


def open_knowledge(data: str | os.PathLike, tokenizer, max_prompt: int = MAX_PROMPT,
                   max_output: int = MAX_OUTPUT) -> tuple[KnowledgeItems, dict[int, dict], dict[str, list[int]] | None]:
    """A folder holding `*.item.json` (and `*.inter.json`) -> (the items encoded with the model's tokenizer,
    their item.json fields, the training interactions or None)."""
    corpus = load_knowledge_corpus(data)
    items = encode_knowledge(corpus, tokenizer, max_prompt, max_output)
    meta = read_item_meta(item_json_path(data))
    return items, meta, read_interactions(os.path.dirname(item_json_path(data)))


# --- the text model ---------------------------------------------------------------------------------
GATE_ORDERS = (2, 3, 4, 5, 6)  # KN orders fitted; the gate compares with the one the old validation chooses


def train_text_model(data: str | os.PathLike, out: str | os.PathLike, model_cfg_for, cfg, val_fraction: float = 0.1,
                     device: str = "cpu", on_log=None, progress: bool = False) -> tuple[str, list[dict]]:
    """The knowledge text model, selected without the new items: tokenizer and LM trained on the old items less
    a validation share (early stopping: the lowest validation loss, `best/`), a temperature fitted there and
    folded in, saved to out/model; then the quality gate on the new items' descriptions against KN n-gram
    models of `GATE_ORDERS` fitted on the same training items, the order chosen by validation perplexity.
    model_cfg_for(vocab_size, max_len) -> ModelConfig; cfg: TextLMConfig. -> (out/model, the gate's rows)."""
    out = os.fspath(out)
    corpus = load_knowledge_corpus(data, seed=cfg.seed)
    tokenizer = train_knowledge_tokenizer(corpus)
    items = encode_knowledge(corpus, tokenizer)
    split = items.validation_split(val_fraction, seed=cfg.seed + 1)
    max_len = max(len(p) + len(o) for p, o in zip(items.prompts, items.outputs))
    train_knowledge_lm(items, tokenizer, model_cfg_for(tokenizer.vocab_size, max_len),
                       dataclasses.replace(cfg, max_len=max_len), os.path.join(out, "lm"), on_log=on_log,
                       progress=progress, device=device, train_ids=split.old, heldout_ids=split.new)
    model, meta = load_checkpoint(os.path.join(out, "lm", "best"), device=device)
    temperature = fit_temperature(model, items, split.new)
    folder = os.path.join(out, "model")
    save_checkpoint(fold_temperature(model, temperature), meta, folder)
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    model, _ = load_text_lm(folder, device=device)  # the saved files are what is scored
    seqs = [p + o for p, o in items.pairs(split.old)]
    ngrams = {n: NGramLM.fit(seqs, tokenizer.vocab_size, n) for n in GATE_ORDERS}
    val = {n: ngram_nll(m, items, split.new).ppl for n, m in ngrams.items()}
    chosen = min(val, key=val.get)
    rows = []
    for n, m in ngrams.items():
        g = knowledge_gate(model, m, items, seed=cfg.seed)
        rows.append({"task": "knowledge-gate", **dataclasses.asdict(g), "ngram_val_ppl": val[n],
                     "chosen_order": n == chosen, "temperature": temperature,
                     "lm_val_ppl": lm_nll(model, items, split.new).ppl})
    return folder, rows


# --- files ---------------------------------------------------------------------------------------------
def meta_path(path: str | os.PathLike) -> str:
    return os.fspath(path) + ".meta.json"


def read_done(path: str | os.PathLike, repair: bool = True) -> dict[int, Generated]:
    """The items already in a knowledge file; a torn last line (an interrupted write) is skipped, and cut off
    the file where `repair` (a file being resumed)."""
    done: dict[int, Generated] = {}
    if not os.path.exists(path):
        return done
    with open(path, "rb") as f:
        data = f.read()
    good = 0
    for ln, raw in enumerate(data.splitlines(keepends=True), 1):
        try:
            obj = json.loads(raw) if raw.endswith(b"\n") else None
        except json.JSONDecodeError:
            obj = None
        if obj is None:
            if good + len(raw) < len(data):  # not the last line: the file is damaged, not torn
                raise DataError(f"{path}:{ln}: not a JSON line; move the file away or fix it")
            break
        done[int(obj["item"])] = Generated(int(obj["item"]), obj["text"], tuple(obj.get("tokens", ())),
                                           int(obj.get("group", 0)), int(obj.get("target_calls", 0)))
        good += len(raw)
    if good < len(data) and repair:
        with open(path, "r+b") as f:
            f.truncate(good)
    return done


def check_settings(path: str | os.PathLike, settings: dict) -> None:
    """Write the sidecar, or refuse a file whose sidecar names other settings."""
    side = meta_path(path)
    if os.path.exists(side):
        with open(side, encoding="utf-8") as f:
            old = json.load(f)
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            k = diff[0]
            raise DataError(f"{path}: written with {k}={old.get(k)!r}, now {k}={settings.get(k)!r}; "
                            f"use another --out or the same settings")
        return
    tmp = side + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=1)
    os.replace(tmp, side)


def generate_file(gen: KnowledgeGenerator, ids: Sequence[int], path: str | os.PathLike, settings: dict,
                  progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """Generate the items of `ids` not yet in `path`, appending JSON lines batch by batch -> (written now,
    already there). progress(done, total) after each batch. The pools first learn the texts already there."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    check_settings(path, settings)
    done = read_done(path)
    if gen.cfg.online:
        gen.learn([done[i] for i in sorted(done)])
    todo = [i for i in ids if i not in done]
    written = 0
    with open(path, "a", encoding="utf-8") as f:
        for batch in gen.generate(todo):
            for g in batch:
                f.write(json.dumps({"item": g.item, "text": g.text, "tokens": list(g.tokens), "group": g.group,
                                    "target_calls": g.target_calls}) + "\n")
            f.flush()
            written += len(batch)
            if progress is not None:
                progress(len(done) + written, len(done) + len(todo))
    return written, len(done)


def select_items(items: KnowledgeItems, which: str) -> tuple[int, ...]:
    """"all", "old" or "new" -> item ids, increasing."""
    if which == "all":
        return tuple(items.ids)
    if which in ("old", "new"):
        return tuple(sorted(getattr(items.split, which)))
    raise ValueError(f"items must be all, old or new, got {which!r}")


__all__ = ["POOLS", "MODES", "KnowledgeConfig", "Generated", "KnowledgeGenerator", "collaborative_embeddings", "item_grouping",
           "make_generator", "train_text_model", "open_knowledge", "read_interactions", "generate_file", "read_done", "select_items", "until_eos"]
