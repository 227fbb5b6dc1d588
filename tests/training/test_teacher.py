"""Teacher data on a toy catalogue: the path tree equals teacher-forced rows, shards round-trip, the
stored beams are beam_search's, sparse log-probs match the dense ones, and reruns resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from recspec.data.datasets import SplitData
from recspec.data.sids import SIDIndex
from recspec.data.trie import build_trie
from recspec.data.vocab import EOS, Vocab, build_prompts
from recspec.decoding.beam_search import beam_search
from recspec.decoding.path_tree import path_logits
from recspec.errors import DataError
from recspec.training.losses import masked_log_softmax
from recspec.training.teacher import (MANIFEST, TeacherData, dense_logp, generate_teacher, path_masks, sparse_logp,
                                      teacher_examples)

NUM_ITEMS = 30
K_PRIME = 5
KEEP = 4  # < both codebooks (5 and 6 codes): the sparse format really drops tokens
HISTORY = 4  # items of history per prompt (short, to keep the toy fast)
SHARD = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine their spin-waits cost
    seconds per test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy(make_decoder):
    """30 items with SIDs (i // 6, i % 6), 12 users with 2..7 items, a tiny random target."""
    codes = np.stack([np.arange(NUM_ITEMS) // 6, np.arange(NUM_ITEMS) % 6], axis=1)
    index = SIDIndex(codes=codes, level_sizes=(5, 6), prefixes=("a", "b"))
    vocab = Vocab.for_index(index)
    rng = np.random.default_rng(0)
    train = [rng.integers(0, NUM_ITEMS, size=int(rng.integers(2, 8))).tolist() for _ in range(12)]
    data = SplitData(name="toy", num_items=NUM_ITEMS, train=train, valid=[], test=[])
    return data, index, vocab, build_trie(index, vocab), make_decoder(vocab, seed=3)


def gen(toy, out, **kw):
    data, index, vocab, trie, target = toy
    args = dict(K_prime=K_PRIME, batch_size=8, keep=KEEP, shard_size=SHARD, history_len=HISTORY, progress=False)
    return generate_teacher(target, trie, vocab, index, data, out, **{**args, **kw})


def all_examples(folder) -> dict[str, torch.Tensor]:
    """Every shard's fields concatenated, in example order."""
    td = TeacherData(folder)
    shards = [td.shard(s) for s in range(len(td.manifest["shards"]))]
    return {k: torch.cat([s[k] for s in shards]) for k in shards[0]}


def test_path_logits_equal_teacher_forced_rows(toy):
    data, index, vocab, trie, target = toy
    prompts = build_prompts(vocab, index, [[1, 2, 3], [7], [4, 9]])
    g = torch.Generator().manual_seed(0)
    L, off = vocab.num_levels, vocab.level_offsets()
    paths = torch.stack([off[lv] + torch.randint(0, vocab.level_sizes[lv], (3, 4), generator=g)
                         for lv in range(L)], dim=-1)  # (B, M, L), M = 4
    tree = path_logits(target, prompts, paths)  # (3, 4, L + 1, V)
    for b in range(3):
        real = prompts.tokens[b, -int(prompts.lengths[b]):]
        for m in range(4):
            row = torch.cat([real, paths[b, m]])[None]
            ref = target.forward_train(row)[0, len(real) - 1:]  # (L + 1, V)
            torch.testing.assert_close(tree[b, m], ref, atol=1e-4, rtol=1e-4)


def test_path_logits_score_beams_like_beam_search(toy):
    """Full-softmax log-probs along each beam (codes, then <eos>) sum to beam_search's score (eos=True)."""
    data, index, vocab, trie, target = toy
    prompts = build_prompts(vocab, index, [[1, 2, 3], [7], [4, 9, 11, 12]])
    beams = beam_search(target, trie, prompts, K_PRIME, eos=True)
    logp = path_logits(target, prompts, beams.codes).log_softmax(-1)  # (B, K, L + 1, V)
    tokens = torch.cat([beams.codes, torch.full((3, K_PRIME, 1), EOS)], dim=-1)
    scores = logp.gather(-1, tokens[..., None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(scores, beams.scores, atol=1e-4, rtol=1e-4)


def test_path_logits_carry_gradients(toy):
    data, index, vocab, trie, target = toy
    prompts = build_prompts(vocab, index, [[1, 2], [5]])
    paths = torch.tensor([[[3, 8], [4, 9]], [[5, 10], [3, 13]]])  # (2, 2, L)
    path_logits(target, prompts, paths).logsumexp(-1).sum().backward()
    grads = [p.grad for p in target.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    target.zero_grad(set_to_none=True)


def test_sparse_round_trip():
    vocab = Vocab(level_sizes=(5, 6), prefixes=("a", "b"))
    logits = 3 * torch.randn(7, vocab.num_levels + 1, vocab.size, generator=torch.Generator().manual_seed(1))
    masks = path_masks(vocab)
    exact = masked_log_softmax(logits, masks)
    sp = sparse_logp(logits, masks, keep=3)
    dense = dense_logp(sp, masks)
    kept = torch.zeros_like(masks.expand_as(dense)).scatter(-1, sp.idx.long(), torch.isfinite(sp.val.float()))
    torch.testing.assert_close(dense[kept], exact[kept], atol=2e-2, rtol=2e-3)  # float16 on the kept
    torch.testing.assert_close(dense.logsumexp(-1), torch.zeros(7, 3), atol=2e-3, rtol=0)  # mass 1
    assert (dense[~masks.expand_as(dense)] == float("-inf")).all()
    rest = torch.where(masks & ~kept, exact, torch.full_like(exact, float("-inf"))).logsumexp(-1)
    torch.testing.assert_close(sp.rest, rest)  # the dropped mass, exact
    assert sp.val.dtype == torch.float16 and sp.idx.dtype == torch.int16
    whole = dense_logp(sparse_logp(logits, masks, keep=8), masks)  # keep >= every level: exact
    torch.testing.assert_close(whole[masks.expand_as(whole)], exact[masks.expand_as(exact)], atol=1e-2, rtol=2e-3)


def test_generate_and_read_back(toy, tmp_path):
    data, index, vocab, trie, target = toy
    info = gen(toy, tmp_path)
    examples = teacher_examples(data.train)
    assert info.num_examples == len(examples) == sum(len(s) - 1 for s in data.train)
    assert info.num_shards == -(-len(examples) // SHARD) and info.shards_written == info.num_shards
    f = all_examples(tmp_path)
    assert torch.equal(f["example"].long(), torch.from_numpy(examples))
    histories = [data.train[u][max(0, j - HISTORY):j] for u, j in examples.tolist()]
    items = [data.train[u][j] for u, j in examples.tolist()]
    prompts = build_prompts(vocab, index, histories, HISTORY)
    beams = beam_search(target, trie, prompts, K_PRIME, eos=True)  # the teacher ranks its beams with <eos>
    L = vocab.num_levels
    gt = torch.from_numpy(vocab.item_tokens(index.codes[items]))
    assert torch.equal(f["tokens"][:, 0, :L].long(), gt)  # path 0: the ground truth
    assert torch.equal(f["tokens"][:, 1:, :L].long(), beams.codes)  # paths 1..K': beam_search's beams
    assert (f["tokens"][..., L] == EOS).all()
    torch.testing.assert_close(f["beam_score"], beams.scores)
    T = prompts.tokens.shape[1]
    assert torch.equal(f["prompt"][:, -T:].long(), prompts.tokens) and (f["prompt"][:, :-T] == 0).all()
    # sparse log-probs equal the dense level-masked ones at every kept entry
    paths = f["tokens"][..., :L].long()
    exact = masked_log_softmax(path_logits(target, prompts, paths), path_masks(vocab))
    stored = exact.gather(-1, f["idx"].long())
    finite = torch.isfinite(f["val"].float())
    torch.testing.assert_close(f["val"].float()[finite], stored[finite], atol=2e-2, rtol=2e-3)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["complete"] and manifest["K_prime"] == K_PRIME and manifest["keep"] == KEEP


def test_teacher_data_batches(toy, tmp_path):
    data, index, vocab, trie, target = toy
    gen(toy, tmp_path)
    td = TeacherData(tmp_path)
    td.check_fits(vocab, index.fingerprint())
    seen = []
    for batch in td.batches(batch_size=6, seed=1):
        B, M, L1 = batch.tokens.shape
        assert (M, L1) == (1 + K_PRIME, vocab.num_levels + 1) and batch.paths.shape == (B, M, L1 - 1)
        assert batch.teacher_logp.shape == (B, M, L1, vocab.size)
        assert torch.isfinite(batch.teacher_logp[batch.masks.expand_as(batch.teacher_logp)]).all()
        real = batch.prompts.tokens != 0
        assert torch.equal(real.sum(1), batch.prompts.lengths) and real[:, -1].all()  # left padding
        seen += [tuple(e) for e in batch.example.tolist()]
    assert sorted(seen) == sorted(map(tuple, teacher_examples(data.train).tolist()))
    with pytest.raises(DataError):
        td.check_fits(vocab, "another-index")


def test_resume_skips_complete_shards(toy, tmp_path):
    first = gen(toy, tmp_path)
    assert first.num_shards >= 3
    names = json.loads((tmp_path / MANIFEST).read_text())["shards"]
    before = all_examples(tmp_path)
    stamps = {n: os.stat(tmp_path / n).st_mtime_ns for n in names}
    os.remove(tmp_path / names[1])  # as if the run had stopped before shard 1
    again = gen(toy, tmp_path)
    assert (again.shards_written, again.shards_skipped) == (1, first.num_shards - 1)
    assert all(os.stat(tmp_path / n).st_mtime_ns == stamps[n] for i, n in enumerate(names) if i != 1)
    after = all_examples(tmp_path)
    assert all(torch.equal(before[k], after[k]) for k in before)
    done = gen(toy, tmp_path)
    assert (done.shards_written, done.shards_skipped) == (0, first.num_shards)
    with pytest.raises(DataError, match="K_prime"):
        gen(toy, tmp_path, K_prime=3)


def test_incomplete_folder_is_refused(toy, tmp_path):
    gen(toy, tmp_path, max_examples=20)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(DataError, match="incomplete"):
        TeacherData(tmp_path)
    with pytest.raises(DataError):
        TeacherData(tmp_path / "missing")

