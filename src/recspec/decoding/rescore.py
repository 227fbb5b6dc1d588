"""Score given items under a model: the cumulative log-probability beam search assigns to a SID path.

Used to audit results: a list decoded in bf16 can be re-scored in fp32 to tell a real disagreement
from two near-equal candidates that rounding ordered differently.
"""

from __future__ import annotations

import torch

from recspec.data.trie import SIDTrie
from recspec.data.vocab import EOS, Prompts
from recspec.decoding.path_tree import path_logits
from recspec.models.decoder import Decoder


@torch.no_grad()
def sid_scores(model: Decoder, trie: SIDTrie, prompts: Prompts, sids: torch.Tensor, eos: bool = False) -> torch.Tensor:
    """prompts (B users); sids (B, M) unique-SID rows (-1: none) -> (B, M) float32 sum over the L codes
    (and <eos>, with eos=True) of log softmax(logits) at each step, as beam search scores them (-inf
    where sid < 0)."""
    B, M = sids.shape
    L = trie.num_levels
    codes = trie.sids[sids.clamp(min=0)]  # (B, M, L)
    tokens = codes + trie.level_offset[:L].to(codes.device)  # (B, M, L) token ids
    logp = torch.log_softmax(path_logits(model, prompts, tokens).float(), dim=-1)  # (B, M, L + 1, V)
    steps = torch.cat([tokens, torch.full_like(tokens[..., :1], EOS)], dim=-1)  # (B, M, L + 1)
    score = logp.gather(-1, steps[..., None])[..., 0][..., : L + int(eos)].sum(-1)  # (B, M)
    return torch.where(sids >= 0, score, torch.full_like(score, float("-inf")))
