"""Draft alignment on a toy catalogue: every objective learns, each reads the paths it should, resume is
exact, validation measures acceptance, and teacher data of another index or target is refused."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from recspec.config import DecodeConfig, DistillConfig, TreeConfig
from recspec.data.catalog import Catalog
from recspec.data.datasets import Example, SplitData
from recspec.data.sids import SIDIndex
from recspec.data.trie import build_trie
from recspec.data.vocab import Vocab
from recspec.errors import DataError
from recspec.models.hf import load_checkpoint
from recspec.training.distill import OBJECTIVES, acceptance, distill, objective_loss, student_logits
from recspec.training.teacher import TeacherData, generate_teacher

NUM_ITEMS = 30
K_PRIME = 4
OBJECTIVE_NAMES = tuple(OBJECTIVES)
BASE = DistillConfig(epochs=1, batch_size=8, lr=1e-2, warmup_steps=1, eval_users=0,
                     eval_decode=DecodeConfig(K=2, tree=TreeConfig(draft_beams=4, gamma=2)), K=3, threads=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def toy_catalogue(level_sizes=(5, 6), seed: int = 0) -> Catalog:
    """30 items with SIDs (i // 6, i % 6) (or permuted codes for another index), 14 users of 2..6 items."""
    codes = np.stack([np.arange(NUM_ITEMS) // 6, np.arange(NUM_ITEMS) % 6], axis=1)
    if seed:
        codes = codes[np.random.default_rng(seed).permutation(NUM_ITEMS)]
    index = SIDIndex(codes=codes, level_sizes=level_sizes, prefixes=("a", "b"))
    vocab = Vocab.for_index(index)
    rng = np.random.default_rng(0)
    train = [rng.integers(0, NUM_ITEMS, size=int(rng.integers(2, 7))).tolist() for _ in range(14)]
    valid = [Example(str(u), tuple(s), (int(rng.integers(0, NUM_ITEMS)),)) for u, s in enumerate(train)]
    data = SplitData(name="toy", num_items=NUM_ITEMS, train=train, valid=valid, test=valid)
    return Catalog(data, index, vocab, build_trie(index, vocab), None)


@pytest.fixture(scope="module")
def setup(make_decoder, tmp_path_factory):
    """The catalogue, a tiny random target and its teacher data (a few dozen examples, 3 shards)."""
    cat = toy_catalogue()
    target = make_decoder(cat.vocab, seed=3)
    folder = tmp_path_factory.mktemp("teacher")
    generate_teacher(target, cat.trie, cat.vocab, cat.index, cat.data, folder, K_prime=K_PRIME, batch_size=16,
                     keep=4, shard_size=24, history_len=4, progress=False)
    return cat, target, TeacherData(folder)


def student(make_decoder, cat, seed=7):
    return make_decoder(cat.vocab, seed=seed, std=0.1).train()


def first_batch(teacher: TeacherData):
    return teacher.load_batch(*teacher.epoch_plan(8, seed=0, epoch=0)[0])


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_each_objective_lowers_its_loss(objective, setup, make_decoder, tmp_path):
    cat, target, teacher = setup
    cfg = dataclasses.replace(BASE, objective=objective, epochs=3)
    draft = student(make_decoder, cat)
    before = {k: v.clone() for k, v in draft.state_dict().items()}
    batch = first_batch(teacher)
    with torch.no_grad():
        loss0 = objective_loss(student_logits(draft, batch, OBJECTIVES[objective].gt_only), batch, cfg)
    logs: list[dict] = []
    res = distill(draft, target, teacher, cat, cfg, tmp_path, on_log=logs.append, progress=False)
    with torch.no_grad():
        loss1 = objective_loss(student_logits(draft, batch, OBJECTIVES[objective].gt_only), batch, cfg)
    assert res.stop_reason == "done" and res.steps == 3 * len(teacher.epoch_plan(8))
    assert torch.isfinite(loss0) and torch.isfinite(loss1) and loss1 < loss0
    assert all(np.isfinite(r["loss"]) for r in logs if r["event"] == "train")
    assert any(not torch.equal(before[k], v) for k, v in draft.state_dict().items())
    assert res.checkpoint == str(tmp_path / "last")  # eval_users=0: no validation, no best/


def perturbed(batch, paths: slice):
    """The batch with the teacher's log p and beam tokens of `paths` replaced by other valid ones."""
    logp = batch.teacher_logp.clone()
    logp[:, paths] = logp[:, paths].flip(0)  # another example's distributions (same masks)
    tokens = batch.tokens.clone()
    tokens[:, paths] = tokens[:, paths].flip(0)
    return dataclasses.replace(batch, teacher_logp=logp, tokens=tokens)


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_objectives_read_the_paths_they_claim(objective, setup, make_decoder):
    cat, _, teacher = setup
    batch = first_batch(teacher)
    obj, cfg = OBJECTIVES[objective], dataclasses.replace(BASE, objective=objective, alpha=1.0)
    s = student_logits(student(make_decoder, cat), batch, obj.gt_only).detach()
    assert s.shape[1] == (1 if obj.gt_only else 1 + K_PRIME)
    loss = objective_loss(s, batch, cfg)
    unread, read = (slice(1, None), slice(0, 1)) if obj.gt_only else (slice(0, 1), slice(1, None))
    if objective != "ce":  # alpha = 1: CE on path 0 is out, the alignment loss alone reads its paths
        assert objective_loss(s, perturbed(batch, unread), cfg) == loss
        assert objective_loss(s, perturbed(batch, read), cfg) != loss
    ce = objective_loss(s, batch, dataclasses.replace(cfg, objective="ce"))
    assert objective_loss(s, batch, dataclasses.replace(cfg, alpha=0.0)) == ce  # alpha 0: CE on path 0 only
    assert objective_loss(s, perturbed(batch, slice(1, None)), dataclasses.replace(cfg, objective="ce")) == ce


def test_dead_beams_do_not_count_and_matching_student_zeroes_atspeed_r(setup):
    _, _, teacher = setup
    batch = first_batch(teacher)
    cfg = dataclasses.replace(BASE, objective="atspeed-r", alpha=1.0)
    s = batch.teacher_logp.clone()  # a student whose distributions are the teacher's
    assert objective_loss(s, batch, cfg).item() == pytest.approx(0.0, abs=1e-6)
    noisy = s + torch.randn(s.shape, generator=torch.Generator().manual_seed(0))
    loss = objective_loss(noisy, batch, cfg)
    dead = batch.beam_score.clone()
    dead[:, -1] = float("-inf")  # the last beam of every example is not there
    garbage = batch.teacher_logp.clone()
    garbage[:, -1] = garbage[:, -1].flip(0)
    masked = dataclasses.replace(batch, beam_score=dead, teacher_logp=garbage)
    alive = dataclasses.replace(batch, beam_score=dead)
    assert objective_loss(noisy, masked, cfg) == objective_loss(noisy, alive, cfg) != loss


def test_resume_gives_the_weights_of_an_uninterrupted_run(setup, make_decoder, tmp_path):
    cat, target, teacher = setup
    cfg = dataclasses.replace(BASE, objective="atspeed-s", epochs=2, eval_every=3, eval_users=3)
    full = student(make_decoder, cat)
    ref = distill(full, target, teacher, cat, cfg, tmp_path / "full", progress=False)
    part = student(make_decoder, cat)
    stop = distill(part, target, teacher, cat, dataclasses.replace(cfg, max_steps=4), tmp_path / "part", progress=False)
    assert (stop.steps, stop.stop_reason) == (4, "max_steps")
    logs: list[dict] = []
    resumed = student(make_decoder, cat, seed=8)  # other initial weights: they must come from the checkpoint
    res = distill(resumed, target, teacher, cat, cfg, tmp_path / "part", on_log=logs.append, progress=False)
    assert logs[0]["event"] == "resume" and logs[0]["step"] == 4
    assert (res.steps, res.stop_reason) == (ref.steps, "done")
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    again = distill(student(make_decoder, cat), target, teacher, cat, cfg, tmp_path / "part", progress=False)
    assert again.steps == ref.steps and again.best == ref.best  # finished: returns at once


@pytest.mark.parametrize("objective, mode", [("atspeed-s", "strict"), ("atspeed-r", "relaxed")])
def test_validation_measures_acceptance_and_keeps_the_best(objective, mode, setup, make_decoder, tmp_path):
    cat, target, teacher = setup
    cfg = dataclasses.replace(BASE, objective=objective, epochs=2, eval_users=6)
    logs: list[dict] = []
    res = distill(student(make_decoder, cat), target, teacher, cat, cfg, tmp_path, on_log=logs.append, progress=False)
    evals = [r for r in logs if r["event"] == "eval"]
    assert len(evals) == 2 and res.metric == f"{mode}_accepted_levels"
    L = cat.vocab.num_levels
    for r in evals:
        for m in ("strict", "relaxed"):
            assert 0 <= r[f"{m}_accepted_levels"] <= cfg.eval_decode.tree.gamma
            assert 1 <= r[f"{m}_target_calls"] <= L + 1
    assert res.best == max(r[res.metric] for r in evals)
    best, meta = load_checkpoint(res.checkpoint)
    assert res.checkpoint == str(tmp_path / "best") and meta.role == "draft"
    again = acceptance(target, best, cat, cat.data.valid[:6], cfg)  # the stored numbers are reproducible
    assert again == {k: v for k, v in meta.extra["train"]["metrics"].items()}
    assert json.loads((tmp_path / "train_state.json").read_text())["metric"] == res.metric


def test_the_target_as_its_own_draft_is_accepted_in_one_call(setup):
    cat, target, _ = setup
    m = acceptance(target, target, cat, cat.data.valid[:5], dataclasses.replace(BASE, eval_decode=BASE.eval_decode.replace(gamma=3)))
    L = cat.vocab.num_levels  # a tree drafts every level but the last, the target's own (no <eos> step by default)
    assert m["strict_target_calls"] == 1.0 and m["strict_accepted_levels"] == L - 1


def test_teacher_data_of_another_index_or_target_is_refused(setup, make_decoder, tmp_path):
    cat, target, teacher = setup
    other = toy_catalogue(seed=5)  # same vocabulary, permuted codes: another index
    with pytest.raises(DataError, match="another SID vocabulary / index"):
        distill(student(make_decoder, other), target, teacher, other, BASE, tmp_path, progress=False)
    with pytest.raises(DataError, match="another target"):
        distill(student(make_decoder, cat), make_decoder(cat.vocab, seed=4), teacher, cat, BASE, tmp_path,
                progress=False)
    with pytest.raises(ValueError, match="unknown objective"):
        DistillConfig(objective="wordKD")
