"""M paths after one prompt, scored in one forward: the model's logits along every path at once.

[prompt | path 0 | ... | path M-1]: each path token attends to the prompt's real tokens and to its own
path's earlier tokens, at position prompt length + j. The prompt is encoded once, not once per path:
T + M*L tokens instead of M*(T + L) for M separate teacher-forced rows. With grad where enabled, so
distillation trains through it (training/teacher.py, training/distill.py); `rescore` audits decoded
lists with it.
"""

from __future__ import annotations

import torch

from recspec.data.vocab import Prompts
from recspec.decoding.prompt import ancestor_mask, prefill_mask, prompt_key_mask, prompt_positions
from recspec.models.decoder import Decoder


class _CallKV:
    """KV "cache" of a forward whose queries fill slots 0..Q-1 in order: it holds just this call's
    keys/values, one tensor per layer, written without in-place ops so autograd goes through it
    (the decoding KVCache scatters into one shared buffer)."""

    def __init__(self, num_layers: int):
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k[layer], self.v[layer] = k, v  # slots == arange(Q): the write is the identity


def path_tree(prompts: Prompts, paths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """prompts (B, T) left-padded; paths (B, M, L) token ids -> tokens, positions (B, Q) and the
    attention mask (B, Q, Q), Q = T + M*L. Slot T + m*L + j is path m's token j: it sees the prompt's
    real tokens and its path's tokens 0..j, at position length + j; prompt slots are causal."""
    B, T = prompts.tokens.shape
    _, M, L = paths.shape
    Q, dev = T + M * L, paths.device
    j = torch.arange(L, device=dev)
    tokens = torch.cat([prompts.tokens, paths.reshape(B, M * L)], dim=1)
    positions = torch.cat([prompt_positions(prompts), prompts.lengths[:, None] + j.repeat(M)[None]], dim=1)
    # ancestor i of path token (m, j) is slot T + m*L + min(i, j): repeats of itself pad i > j
    anc = T + torch.arange(M, device=dev)[:, None, None] * L + torch.minimum(j[None, None, :], j[None, :, None])
    path_mask = ancestor_mask(prompt_key_mask(prompts, Q), anc.reshape(1, M * L, L).expand(B, -1, -1))
    return tokens, positions, torch.cat([prefill_mask(prompts, Q), path_mask], dim=1)


def path_logits(model: Decoder, prompts: Prompts, paths: torch.Tensor) -> torch.Tensor:
    """The model's logits at every position of every path, in one forward (with grad if enabled).

    prompts (B, T); paths (B, M, L) token ids -> (B, M, L + 1, V): [:, m, j] predicts path m's token j
    (j = L: the `<eos>` after it). [:, :, 0] is the prompt's last position, shared by all paths."""
    tokens, positions, mask = path_tree(prompts, paths)
    B, T = prompts.tokens.shape
    _, M, L = paths.shape
    slots = torch.arange(tokens.shape[1], device=tokens.device).expand(B, -1)
    h = model.hidden(tokens, positions, mask, _CallKV(model.cfg.num_layers), slots)  # (B, Q, C)
    logits = model.lm_head(h[:, T - 1:])  # (B, 1 + M*L, V): LM head on the needed rows only
    V = logits.shape[-1]
    first = logits[:, :1, None].expand(B, M, 1, V)
    return torch.cat([first, logits[:, 1:].reshape(B, M, L, V)], dim=2)
