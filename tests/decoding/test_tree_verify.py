"""One-pass greedy tree verification equals the level-by-level verification it replaces, on hand-built trees
and scores: random trees whose nodes often hold the target's greedy (or second) token, greedy and top-k/beta."""

import pytest
import torch

from recspec.data.vocab import BOS, EOS, PAD
from recspec.decoding.constraints import FreeText
from recspec.decoding.handoff import Scores
from recspec.decoding.round import RoundState, initial_beams, verify
from recspec.decoding.tree import DraftTree, Layout
from recspec.decoding.tree_verify import FollowRule, accepted_path, parent_rows, verify_tree
from recspec.decoding.verify import StrictTopK, TopKBeta

V, N, D, L = 11, 4, 4, 9


def _case(seed: int, B: int = 96):
    g = torch.Generator().manual_seed(seed)
    c = FreeText(V, L, EOS, (PAD, BOS))
    tokens = torch.randint(3, V, (B, D, N), generator=g)
    tokens[torch.rand(B, D, N, generator=g) < 0.1] = EOS
    parents = torch.randint(0, N, (B, D, N), generator=g)
    parents[:, 0] = 0
    valid = torch.rand(B, D, N, generator=g) < 0.8
    key = parents * V + tokens  # a drafter marks repeated (parent, token) siblings invalid: so does the case
    valid &= ~((key[..., :, None] == key[..., None, :]) & torch.ones(N, N, dtype=torch.bool).tril(-1)).any(-1)
    tree = DraftTree(tokens, parents, valid)
    # logits: each row's best (or second) token is often one of its drafted children's
    logits = torch.randn(B, 1 + D * N, V, generator=g)
    prow = parent_rows(tree).reshape(B, -1)
    for b in range(B):
        for r in range(1 + D * N):
            kids = tokens.reshape(B, -1)[b][(prow[b] == r) & valid.reshape(B, -1)[b]]
            if len(kids) and torch.rand(1, generator=g) < 0.8:
                pick = kids[torch.randint(len(kids), (1,), generator=g)]
                logits[b, r, pick] += 3.0 if torch.rand(1, generator=g) < 0.7 else 1.2
    logp = torch.log_softmax(logits, -1)
    scores = Scores(beams=logp[:, :1], tree=logp[:, 1:].reshape(B, D, N, V), hidden=torch.zeros(B, 1, 1))
    lay = Layout(T=3, L=L, K=1, N=N, gamma=D)
    beams = initial_beams(B, 1, L, lay, c.ROOT, "cpu")
    beams.level[:] = torch.randint(0, L + 1, (B,), generator=g)  # some users nearly done, some finished
    beams.scores[:, 0] = torch.randn(B, generator=g) * 5
    beams.states[:, 0] = (torch.rand(B, generator=g) < 0.1).long()  # a few texts already ended
    return c, lay, beams, scores, tree


@pytest.mark.parametrize("rule", [StrictTopK(), TopKBeta(2, 0.1), TopKBeta(3, 0.05)], ids=["greedy", "k2", "k3"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_pass_equals_level_by_level(rule, seed):
    c, lay, beams, scores, tree = _case(seed)
    s = RoundState(None, None, rule, c, lay, None, None, None, None)
    want_beams, want = verify(s, beams, scores, tree, early_exit=False)
    got_beams, got = verify_tree(c, lay, beams, scores, tree, rule.one_pass(1))
    for name in ("scores", "states", "codes", "path", "level"):
        assert torch.equal(getattr(got_beams, name), getattr(want_beams, name)), name
    live = beams.level < lay.end
    assert torch.equal(got.accepted[live], want.accepted[live])
    assert torch.equal(got.nodes, want.nodes) and torch.equal(got.copy_src, want.copy_src)
    assert torch.equal(got.copy_dst, want.copy_dst)
    committed = torch.arange(D + 1)[None] <= got.accepted[:, None]
    assert torch.equal(got.tokens[..., 0][committed & live[:, None]], want.tokens[..., 0][committed & live[:, None]])
    assert int(got.accepted.max()) >= 2  # the cases do reach deep into the trees


def test_path_takes_the_first_followed_child_and_stops_at_the_user_depth():
    # two followed children of the root (duplicates): the first is taken; user 1 may accept one level only
    follow = torch.tensor([[[False, True, True], [True, False, False]]] * 2)  # (B=2, d=2, N=3)
    tree = DraftTree(torch.zeros(2, 2, 3, dtype=torch.long), torch.tensor([[[0, 0, 0], [1, 0, 0]]] * 2),
                     torch.ones(2, 2, 3, dtype=torch.bool))
    nodes, end = accepted_path(follow, parent_rows(tree), torch.tensor([2, 1]))
    assert nodes.tolist() == [[1, 0], [1, -1]]
    assert end.tolist() == [1 + 3 + 0, 1 + 1]


def test_k1_is_greedy_and_strict_has_no_one_pass_for_wide_beams():
    assert TopKBeta(1, 0.5).one_pass(1) == FollowRule(1, 0.5)
    assert StrictTopK().one_pass(1) == FollowRule(1) and StrictTopK().one_pass(2) is None
