"""Teacher data for draft alignment (spec section 5): the target's beams and distributions, on disk.

Examples: one per item after each user's first in the training sequences; the prompt holds up to
`history_len` (20) items before it. For each example the target gives, over M = 1 + K' *paths* of
L code tokens (path 0 = the ground-truth item, paths 1..K' = the target's top-K' trie-constrained
beams from `beam_search` scoring `<eos>` too, best first), its distribution at the L + 1 positions of every path
(predicting codes 1..L, then `<eos>`): (a) of the spec is path 0, (b) paths 1..K'.

Distributions are restricted to the SID vocabulary: at a position predicting level l,
p = softmax(logits | level_mask(vocab, l)) (losses.py). They are stored sparse, per position:
    val  (..., keep) float16  log p of the `keep` most probable tokens, best first
                              (-inf in the slots beyond a level with fewer than `keep` codes)
    idx  (..., keep) int16    their token ids
    rest (...)       float32  log of the mass of the level's other tokens (-inf: none left)
`dense_logp` puts the rest mass uniformly on the level's tokens that were not kept, so p is exact on
the kept tokens (up to float16 rounding) and sums to 1. (Renormalising over the kept tokens instead
would give p = 0 to tokens a student may rank in its top-K, making AtSpeed-S's reverse KL infinite.)
Size per example: M * (L + 1) * (4 * keep + 4) bytes: Beauty (L = 4, K' = 20, keep = 64) 27 KB, so
~2.7 GB for ~100k examples (dense float16 would be ~21 GB).

Both models see a path tree in ONE forward (`path_logits`, decoding/path_tree.py): [prompt | path 0 |
... | path M-1], each path token attending to the prompt and its own path's earlier tokens, at position
prompt length + j.
Cost per example: T + M*L tokens (Beauty: T <= 101, M*L = 84) instead of M*(T + L) tokens for M
separate teacher-forced rows (~ 2 100): the prompt is encoded once, not once per path. Generation
costs one constrained beam search plus this forward per batch.

On disk (out_dir): teacher.json (manifest: setup, shard names, `complete`) and one
shard-NNNNN.safetensors per `shard_size` examples (fields: `teacher_batch`'s plus `example`). Shards
are written to a temp name and renamed, so a shard file that exists is complete; a rerun skips it.
Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from recspec.data.datasets import HISTORY_LEN, SplitData
from recspec.data.sids import SIDIndex
from recspec.data.trie import SIDTrie
from recspec.data.vocab import EOS, Prompts, Vocab, build_prompts
from recspec.decoding.beam_search import beam_search, check_width
from recspec.decoding.path_tree import path_logits
from recspec.errors import DataError
from recspec.models.decoder import Decoder
from recspec.training.losses import level_mask, masked_log_softmax

FORMAT = 1  # manifest format version
MANIFEST = "teacher.json"
NEG_INF = float("-inf")


# --- the path tree (decoding/path_tree.py) restricted to the SID vocabulary --------------------------
def path_masks(vocab: Vocab, device=None) -> torch.Tensor:
    """(L + 1, V) bool: row j = the tokens allowed at path position j (level j's codes; row L <eos>)."""
    return level_mask(vocab, torch.arange(vocab.num_levels + 1, device=device))


# --- sparse distributions ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SparseLogp:
    """Top-`keep` log-probabilities of level-masked distributions (see the module docstring)."""

    val: torch.Tensor  # (..., keep) float16 log p, best first; -inf where the level has no more tokens
    idx: torch.Tensor  # (..., keep) int16 token ids
    rest: torch.Tensor  # (...) float32 log of the mass not kept; -inf where none


def sparse_logp(logits: torch.Tensor, mask: torch.Tensor, keep: int) -> SparseLogp:
    """logits (..., V), mask (..., V) bool -> the top-`keep` masked log-probabilities."""
    if logits.shape[-1] > 32767:
        raise ValueError(f"vocabulary of {logits.shape[-1]} tokens does not fit int16 token ids")
    logp = masked_log_softmax(logits, mask)  # (..., V) float32
    val, idx = logp.topk(min(keep, logp.shape[-1]), dim=-1)
    rest = logp.scatter(-1, idx, NEG_INF).logsumexp(dim=-1)  # (...)
    val = torch.where(torch.isfinite(val), val.clamp(min=-6e4), val)  # inside float16's range
    return SparseLogp(val.half(), idx.short(), rest.float())


def dense_logp(sp: SparseLogp, mask: torch.Tensor) -> torch.Tensor:
    """SparseLogp (...) and mask (..., V) -> (..., V) float32 log p: the kept entries as stored, the
    rest mass spread evenly on the mask's other tokens, -inf outside the mask."""
    val, idx = sp.val.float(), sp.idx.long()  # (..., keep)
    mask = mask.expand(*val.shape[:-1], mask.shape[-1])
    kept = torch.isfinite(val)
    n_rest = mask.sum(-1) - kept.sum(-1)  # (...) allowed tokens not kept
    fill = torch.where(n_rest > 0, sp.rest - n_rest.clamp(min=1).float().log(), torch.full_like(sp.rest, NEG_INF))
    dense = torch.where(mask, fill[..., None], torch.full(mask.shape, NEG_INF, device=val.device))
    return dense.scatter(-1, idx, torch.where(kept, val, dense.gather(-1, idx)))


# --- generation -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherInfo:
    out_dir: str
    num_examples: int  # examples in the data set (all shards)
    num_shards: int
    shards_written: int  # by this call
    shards_skipped: int  # complete already (resumed)
    seconds: float  # wall time of this call
    examples_per_s: float  # examples computed by this call per second (0: none computed)
    bytes: int  # size of the shards on disk


def teacher_examples(train: list[list[int]], max_examples: int | None = None) -> np.ndarray:
    """(N, 2) int64 rows (user, j): item j >= 1 of training sequence `user` is the target, items
    before it the history. User-major order; the first `max_examples` where given."""
    rows = [(u, j) for u, seq in enumerate(train) for j in range(1, len(seq))]
    rows = rows[:max_examples] if max_examples is not None else rows
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


@dataclass(frozen=True, eq=False)
class TeacherSetup:
    """What every teacher batch needs."""

    target: Decoder  # the target model (eval mode), on its device
    trie: SIDTrie  # on the target's device
    vocab: Vocab
    index: SIDIndex
    K_prime: int = 20  # teacher beams per example
    keep: int = 64  # log-probabilities kept per position
    history_len: int = HISTORY_LEN  # items of history in a prompt


@torch.no_grad()
def teacher_batch(setup: TeacherSetup, histories: list[list[int]], items: list[int]) -> dict[str, torch.Tensor]:
    """Teacher fields of b examples (history, next item), on the CPU: prompt (b, P) int16 left-padded
    to P = 1 + history_len*(L+1), prompt_len (b,) int32, tokens (b, M, L+1) int16 path tokens ending
    in <eos>, beam_score (b, K') float32, val / idx (b, M, L+1, keep), rest (b, M, L+1)."""
    s, L = setup, setup.vocab.num_levels
    dev = s.target.lm_head.weight.device
    prompts = build_prompts(s.vocab, s.index, histories, s.history_len).to(dev)
    gt = torch.from_numpy(s.vocab.item_tokens(s.index.codes[np.asarray(items, dtype=np.int64)])).to(dev)
    beams = beam_search(s.target, s.trie, prompts, s.K_prime, eos=True)  # ranked with <eos>, as the paths are stored
    paths = torch.cat([gt[:, None], beams.codes], dim=1)  # (b, M, L)
    sp = sparse_logp(path_logits(s.target, prompts, paths), path_masks(s.vocab, dev), s.keep)
    b, T = prompts.tokens.shape
    P = 1 + s.history_len * (L + 1)
    prompt = torch.zeros(b, P, dtype=torch.int16)  # PAD = 0 on the left
    prompt[:, P - T:] = prompts.tokens.cpu().short()
    eos = torch.full((*paths.shape[:2], 1), EOS, dtype=paths.dtype, device=dev)
    return {"prompt": prompt, "prompt_len": prompts.lengths.cpu().int(),
            "tokens": torch.cat([paths, eos], dim=2).cpu().short(), "beam_score": beams.scores.cpu().float(),
            "val": sp.val.cpu(), "idx": sp.idx.cpu(), "rest": sp.rest.cpu()}


def fingerprint(*parts) -> str:
    """Short sha256 of tensors / arrays / json-able objects (identifies the target and the data)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            p = p.detach().float().cpu().numpy()
        h.update(np.ascontiguousarray(p).tobytes() if isinstance(p, np.ndarray) else json.dumps(p).encode())
    return h.hexdigest()[:16]


def _identity(setup: TeacherSetup, data: SplitData, examples: np.ndarray, shard_size: int) -> dict:
    """What a resumed run must share with the one that wrote the shards."""
    items = [data.train[u][j] for u, j in examples.tolist()]
    return {"format": FORMAT, "K_prime": setup.K_prime, "keep": setup.keep, "history_len": setup.history_len,
            "shard_size": shard_size, "num_examples": len(examples), "vocab": setup.vocab.to_dict(),
            "index_fingerprint": setup.index.fingerprint(), "data_fingerprint": fingerprint(examples, items),
            "target_fingerprint": fingerprint(*setup.target.state_dict().values())}


def _write_json(path: str, obj: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def _open_manifest(out_dir: str, identity: dict, num_shards: int) -> dict:
    """Read out_dir's manifest and check it describes the same run, or start one."""
    path = os.path.join(out_dir, MANIFEST)
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        diff = sorted(k for k in identity if old.get(k) != identity[k])
        if diff:
            raise DataError(f"{path}: teacher data of a different setup ({', '.join(diff)}); "
                            "use another folder or delete this one")
        return old
    manifest = {**identity, "shards": [f"shard-{s:05d}.safetensors" for s in range(num_shards)], "complete": False}
    _write_json(path, manifest)
    return manifest


def _shard_complete(path: str, count: int) -> bool:
    if not os.path.isfile(path):
        return False
    with safe_open(path, framework="pt") as f:
        return int((f.metadata() or {}).get("count", -1)) == count


def _compute_shard(setup: TeacherSetup, train: list[list[int]], rows: np.ndarray, batch_size: int,
                   bar: tqdm) -> dict[str, torch.Tensor]:
    """All fields of a shard's examples rows (n, 2), batch by batch -> {field: (n, ...)}; the field
    `example` (n, 2) int32 holds each example's (user, item position) in `train`."""
    parts = []
    for b in range(0, len(rows), batch_size):
        chunk = rows[b:b + batch_size].tolist()
        fields = teacher_batch(setup, [train[u][max(0, j - setup.history_len):j] for u, j in chunk],
                               [train[u][j] for u, j in chunk])
        parts.append({**fields, "example": torch.tensor(chunk, dtype=torch.int32)})
        bar.update(len(chunk))
    return {k: torch.cat([p[k] for p in parts]).contiguous() for k in parts[0]}


def generate_teacher(target: Decoder, trie: SIDTrie, vocab: Vocab, index: SIDIndex, data: SplitData,
                     out_dir: str | os.PathLike, K_prime: int = 20, batch_size: int = 64,
                     max_examples: int | None = None, progress: bool = True, keep: int = 64,
                     shard_size: int = 4096, history_len: int = HISTORY_LEN) -> TeacherInfo:
    """Write the target's teacher data for data.train to out_dir (resuming: complete shards are kept)."""
    t0, out_dir = time.perf_counter(), os.fspath(out_dir)
    check_width(trie, K_prime)
    os.makedirs(out_dir, exist_ok=True)
    setup = TeacherSetup(target, trie.to(target.lm_head.weight.device), vocab, index, K_prime, keep, history_len)
    examples = teacher_examples(data.train, max_examples)
    if not len(examples):
        raise DataError(f"{data.name}: no training examples (every training sequence has fewer than 2 items)")
    num_shards = -(-len(examples) // shard_size)
    identity = _identity(setup, data, examples, shard_size)
    manifest = _open_manifest(out_dir, identity, num_shards)
    written = done = 0
    with tqdm(total=len(examples), unit="ex", disable=not progress, desc="teacher") as bar:
        for s, name in enumerate(manifest["shards"]):
            rows, path = examples[s * shard_size:(s + 1) * shard_size], os.path.join(out_dir, name)
            if _shard_complete(path, len(rows)):
                bar.update(len(rows))
                continue
            fields = _compute_shard(setup, data.train, rows, batch_size, bar)
            save_file(fields, path + ".tmp", metadata={"start": str(s * shard_size), "count": str(len(rows))})
            os.replace(path + ".tmp", path)
            written, done = written + 1, done + len(rows)
    _write_json(os.path.join(out_dir, MANIFEST), {**manifest, "complete": True})
    seconds = time.perf_counter() - t0
    size = sum(os.path.getsize(os.path.join(out_dir, n)) for n in manifest["shards"])
    return TeacherInfo(out_dir, len(examples), num_shards, written, num_shards - written, seconds,
                       done / seconds if done else 0.0, size)


# --- reading ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherBatch:
    """B examples for the student: path 0 is the ground truth, paths 1..K' the teacher's beams."""

    prompts: Prompts  # (B, T) left-padded, T = the longest prompt of the batch
    tokens: torch.Tensor  # (B, M, L + 1) int64 path tokens; the last column is <eos>; targets of CE / SeqKD
    teacher_logp: torch.Tensor  # (B, M, L + 1, V) float32 the target's level-masked log p (dense_logp)
    masks: torch.Tensor  # (L + 1, V) bool allowed tokens per path position (broadcasts over B, M)
    beam_score: torch.Tensor  # (B, K') float32 the target's cumulative log-prob of each beam
    example: torch.Tensor  # (B, 2) int64 (user, item position) in data.train

    @property
    def paths(self) -> torch.Tensor:
        """(B, M, L) the code tokens to feed `path_logits`."""
        return self.tokens[..., :-1]


class TeacherData:
    """Reads a complete teacher folder and yields `TeacherBatch`es, one shard in memory at a time."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = os.fspath(folder)
        path = os.path.join(self.folder, MANIFEST)
        if not os.path.isfile(path):
            raise DataError(f"{self.folder}: no {MANIFEST}; run the teacher generation first")
        with open(path) as f:
            self.manifest = json.load(f)
        if not self.manifest.get("complete"):
            raise DataError(f"{path}: teacher data is incomplete; rerun the generation to finish it")
        self.vocab = Vocab.from_dict(self.manifest["vocab"])
        self.masks = path_masks(self.vocab)  # (L + 1, V)
        self._loaded: tuple[int | None, dict | None] = (None, None)  # (shard, its fields): the last read

    def __len__(self) -> int:
        return int(self.manifest["num_examples"])

    @property
    def K_prime(self) -> int:
        return int(self.manifest["K_prime"])

    def check_fits(self, vocab: Vocab, index_fingerprint: str) -> None:
        """Refuse teacher data made for another vocabulary or SID index."""
        if self.vocab != vocab or self.manifest["index_fingerprint"] != index_fingerprint:
            raise DataError(f"{self.folder}: teacher data was made for another SID vocabulary / index")

    def shard(self, s: int) -> dict[str, torch.Tensor]:
        return load_file(os.path.join(self.folder, self.manifest["shards"][s]))

    def batch(self, fields: dict[str, torch.Tensor], rows: torch.Tensor, device="cpu") -> TeacherBatch:
        """Examples `rows` (b,) of one shard's fields -> a TeacherBatch on `device`."""
        lengths = fields["prompt_len"][rows].long()
        T = int(lengths.max())  # host sync: batch shape
        prompts = Prompts(fields["prompt"][rows, -T:].long(), lengths).to(device)
        masks = self.masks.to(device)
        sp = SparseLogp(*(fields[k][rows].to(device) for k in ("val", "idx", "rest")))
        return TeacherBatch(prompts, fields["tokens"][rows].long().to(device), dense_logp(sp, masks), masks,
                            fields["beam_score"][rows].to(device), fields["example"][rows].long().to(device))

    def shard_sizes(self) -> list[int]:
        """Examples per shard, from the manifest (no shard is read)."""
        n, size = len(self), int(self.manifest["shard_size"])
        return [min(size, n - s * size) for s in range(len(self.manifest["shards"]))]

    def epoch_plan(self, batch_size: int, seed: int = 0, epoch: int = 0) -> list[tuple[int, torch.Tensor]]:
        """One epoch's batches as (shard, example rows (b,) of that shard): shards in random order,
        examples shuffled inside each shard (deterministic given (seed, epoch)); a shard's last
        batch may be smaller. Reads no shard, so a resumed run can skip the batches it has done."""
        rng = np.random.default_rng([seed, epoch])
        sizes, plan = self.shard_sizes(), []
        for s in rng.permutation(len(sizes)):
            perm = torch.from_numpy(rng.permutation(sizes[s]))
            plan += [(int(s), perm[b:b + batch_size]) for b in range(0, len(perm), batch_size)]
        return plan

    def load_batch(self, shard: int, rows: torch.Tensor, device="cpu") -> TeacherBatch:
        """Examples `rows` (b,) of shard `shard` -> a TeacherBatch; the last shard read stays in memory."""
        if self._loaded[0] != shard:
            self._loaded = (shard, self.shard(shard))
        return self.batch(self._loaded[1], rows, device)

    def batches(self, batch_size: int, seed: int = 0, epoch: int = 0, device="cpu") -> Iterator[TeacherBatch]:
        """One epoch of `epoch_plan`'s batches, one shard in memory at a time."""
        for shard, rows in self.epoch_plan(batch_size, seed, epoch):
            yield self.load_batch(shard, rows, device)
