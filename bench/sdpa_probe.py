"""Which SDPA backends compute what we mean (GQA, boolean masks, bf16) on this GPU?

    PYTHONPATH=src python3 bench/sdpa_probe.py [small-target-checkpoint]
"""
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))


def ref_attn(q, k, v, mask):
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = q.double() @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1) @ v


def rel(a, b):
    return float((a.double() - b).norm() / b.norm())


def main():
    torch.manual_seed(0)
    for (B, H, Hkv, Q, S, D) in ((1, 4, 2, 10, 120, 32), (1, 12, 4, 500, 700, 128), (64, 4, 2, 40, 250, 32), (2, 16, 4, 101, 101, 128)):
        q = torch.randn(B, H, Q, D, device="cuda")
        k, v = torch.randn(B, Hkv, S, D, device="cuda"), torch.randn(B, Hkv, S, D, device="cuda")
        mask = torch.rand(B, 1, Q, S, device="cuda") < 0.3
        mask[..., 0] = True
        r = ref_attn(q, k, v, mask)
        for dt in (torch.float32, torch.bfloat16):
            for be in (None, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
                try:
                    if be is None:
                        o = F.scaled_dot_product_attention(q.to(dt), k.to(dt), v.to(dt), attn_mask=mask, enable_gqa=True)
                    else:
                        with sdpa_kernel([be]):
                            o = F.scaled_dot_product_attention(q.to(dt), k.to(dt), v.to(dt), attn_mask=mask, enable_gqa=True)
                    print(f"mask   B{B} H{H}/{Hkv} Q{Q} S{S} D{D} {str(dt)[6:]:8s} {str(be):28s} rel err {rel(o, r):.2e}")
                except Exception as e:  # noqa: BLE001
                    print(f"mask   B{B} H{H}/{Hkv} Q{Q} S{S} {str(dt)[6:]:8s} {str(be):28s} unsupported: {str(e)[:80]}")
        if Q == S:
            causal = torch.ones(Q, S, dtype=torch.bool, device="cuda").tril()[None, None]
            r = ref_attn(q, k, v, causal)
            for dt in (torch.float32, torch.bfloat16):
                for be in (None, SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
                    try:
                        ctx = sdpa_kernel([be]) if be is not None else torch.autocast("cuda", enabled=False)
                        with ctx:
                            o = F.scaled_dot_product_attention(q.to(dt), k.to(dt), v.to(dt), is_causal=True, enable_gqa=True)
                        print(f"causal B{B} H{H}/{Hkv} Q{Q} {str(dt)[6:]:8s} {str(be):28s} rel err {rel(o, r):.2e}")
                    except Exception as e:  # noqa: BLE001
                        print(f"causal B{B} {str(dt)[6:]:8s} {str(be):28s} unsupported: {str(e)[:80]}")
    if len(sys.argv) > 1:
        from recspec.data.catalog import open_catalog
        from recspec.data.vocab import build_prompts
        from recspec.decoding.prompt import prefill
        from recspec.models.hf import for_inference, load_checkpoint
        cat = open_catalog(".data/beauty")
        m, _ = load_checkpoint(sys.argv[1], device="cuda")
        p = build_prompts(cat.vocab, cat.index, [e.history for e in list(cat.data.test)[:64]]).to("cuda")
        with torch.no_grad():
            _, ref = prefill(m.double(), p, p.tokens.shape[1] + 8)
            m = m.float()
            _, f32 = prefill(m, p, p.tokens.shape[1] + 8)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, ac = prefill(m, p, p.tokens.shape[1] + 8)
            _, b16 = prefill(for_inference(m, "bf16-all"), p, p.tokens.shape[1] + 8)
        for name, x in (("fp32", f32), ("autocast", ac), ("bf16", b16)):
            top = (x.topk(10).indices.sort().values == ref.topk(10).indices.sort().values).all(1).float().mean()
            print(f"model prefill logp {name:8s} rel err {rel(x, ref):.2e}  same top-10 set {float(top):.2f}")


if __name__ == "__main__":
    main()
