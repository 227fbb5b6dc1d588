"""Short GPU probe (one call): fp32 training of a 'small' Beauty target (checkpoint to $OUT for CPU
benchmarks), an autocast-vs-fp32 evaluation check, and AR step time vs floor for candidate
0.5B target shapes.

    PYTHONPATH=src python3 bench/gpu_probe.py --data .data/beauty --out $OUT
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.dirname(__file__))

from gpu_bench import log  # noqa: E402
from recspec.config import DecodeConfig, ModelConfig, TrainConfig  # noqa: E402
from recspec.data.catalog import open_catalog  # noqa: E402
from recspec.data.vocab import build_prompts  # noqa: E402
from recspec.evaluation.bench import BenchConfig, make_engine  # noqa: E402
from recspec.evaluation.evaluate import evaluate  # noqa: E402
from recspec.evaluation.timing import ar_step_ms, copy_bandwidth, step_floor_ms  # noqa: E402
from recspec.models.decoder import Decoder  # noqa: E402
from recspec.models.hf import for_inference, load_checkpoint  # noqa: E402
from recspec.training.train import train  # noqa: E402

SHAPES = {
    "1536x20": dict(hidden_size=1536, num_layers=20, num_heads=12, num_kv_heads=4, intermediate_size=4096),
    "2048x12": dict(hidden_size=2048, num_layers=12, num_heads=16, num_kv_heads=4, intermediate_size=5632),
    "2560x8": dict(hidden_size=2560, num_layers=8, num_heads=20, num_kv_heads=4, intermediate_size=6912),
}


def ev(model, cat, tag):
    for name, ex in (("valid500", cat.data.valid[:500]), ("test1000", list(cat.data.test)[:1000])):
        log(tag, name, evaluate(model, cat.trie, cat.vocab, cat.index, ex, K=10, ks=(10,)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".data/beauty")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--small-steps", type=int, default=2000, help="seeded optimiser steps (no clock)")
    args = ap.parse_args()
    cat = open_catalog(args.data)
    test = list(cat.data.test)
    shutil.rmtree("/tmp/rp", ignore_errors=True)
    # 1. fp32 'small' target for the CPU benchmark
    torch.manual_seed(0)
    m = Decoder(ModelConfig.preset(cat.vocab.size, "small")).cuda()
    cfg = TrainConfig(epochs=10, batch_size=64, lr=2e-3, eval_users=500, max_steps=args.small_steps)
    res = train(m, cat.data, cat.index, cat.vocab, cat.trie, cfg, "/tmp/rp/small", progress=False,
                on_log=lambda r: log(r) if r.get("event") == "eval" else None)
    log("small", res)
    shutil.copytree(res.checkpoint, os.path.join(args.out, "small-target"))
    best, _ = load_checkpoint(res.checkpoint, device="cuda")
    ev(best, cat, "small fp32 reloaded")
    # 2. autocast: train a demo-size model under bf16 autocast; evaluate in memory and reloaded
    torch.manual_seed(0)
    m = Decoder(ModelConfig.preset(cat.vocab.size, "demo")).cuda()
    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, eval_users=500, max_steps=800)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        res = train(m, cat.data, cat.index, cat.vocab, cat.trie, cfg, "/tmp/rp/ac", progress=False,
                    on_log=lambda r: log(r) if r.get("event") == "eval" else None)
        ev(m, cat, "autocast in-memory (last) under autocast")
    ev(m, cat, "autocast in-memory (last) fp32")
    best, _ = load_checkpoint(res.checkpoint, device="cuda")
    ev(best, cat, "autocast best reloaded fp32")
    last, _ = load_checkpoint("/tmp/rp/ac/last", device="cuda")
    ev(last, cat, "autocast last reloaded fp32")
    diff = max(float((a - b).abs().max()) for a, b in zip(m.state_dict().values(), last.state_dict().values()))
    log("max |in-memory - reloaded last| weight diff", diff)
    # 3. AR step vs floor per shape
    bw = copy_bandwidth("cuda")
    prompts = build_prompts(cat.vocab, cat.index, [test[0].history]).to("cuda")
    graphs = BenchConfig(decode=DecodeConfig().replace(cuda_graphs=True))
    rows = []
    for name, shape in SHAPES.items():
        torch.manual_seed(0)
        t = Decoder(ModelConfig(vocab_size=cat.vocab.size, max_positions=256, **shape)).cuda()
        t = for_inference(t, "bf16-all")
        p = t.cfg.num_parameters()
        step = ar_step_ms(make_engine("ar", t, None, cat, 10, graphs), prompts)
        floor = step_floor_ms(p, 2, bw)
        rows.append((name, p / 1e6, step, floor))
        del t
        torch.cuda.empty_cache()
    # 4. is torch.compile (Triton) usable here?
    try:
        f = torch.compile(lambda x: torch.nn.functional.silu(x) * x + 1, dynamic=True)
        y = f(torch.randn(1000, device="cuda"))
        log("torch.compile ok", float(y.sum()))
    except Exception as e:  # noqa: BLE001
        log("torch.compile failed:", repr(e)[:300])
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s")
    for name, p, step, floor in rows:
        print(f"{name:8s} {p:7.1f}M params  step {step:.3f} ms  floor {floor:.3f} ms  ratio {step / floor:.2f}")


if __name__ == "__main__":
    main()
