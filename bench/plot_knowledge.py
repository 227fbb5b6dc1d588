"""Plot a knowledge benchmark (bench/gpu_knowledge.py's JSON, GPU or CPU): per batch size, tokens per target call
(tau) and speedup over our own greedy decoding for each pool and pool fraction, greedy and relaxed.

    python3 bench/plot_knowledge.py bench/results/knowledge_office_cpu.json   # writes the .png beside it
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(path: str) -> str:
    with open(path) as f:
        res = json.load(f)
    rows = [r for r in res["rows"] if r.get("task") == "knowledge" and r.get("pool") not in (None, "none")
            and "speedup_vs_ar" in r]
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(2, len(batches), figsize=(6 * len(batches), 7), squeeze=False)
    for col, b in enumerate(batches):
        sel = [r for r in rows if r["batch"] == b]
        labels = sorted({(r["pool"], r.get("pool_fraction"), tuple(r.get("tree", ()))) for r in sel},
                        key=lambda k: (k[0], k[1] or 0, k[2]))
        x = range(len(labels))
        for row, key in enumerate(("tau", "speedup_vs_ar")):
            ax = axes[row][col]
            for k, mode in enumerate(("greedy", "relaxed")):
                vals = [next((r[key] for r in sel if (r["pool"], r.get("pool_fraction"), tuple(r.get("tree", ())))
                              == lab and r["mode"] == mode), 0.0) for lab in labels]
                ax.bar([i + 0.4 * k for i in x], vals, width=0.4, label=mode)
            if key == "speedup_vs_ar":
                ax.axhline(1.0, color="k", lw=0.8)
            ax.set_xticks([i + 0.2 for i in x])
            ax.set_xticklabels([f"{p}\n{f}" + (f"\n{t[0]}x{t[1]}" if t and t[:2] != (4, 8) else "")
                                for p, f, t in labels], fontsize=7)
            ax.set_title(f"batch {b}: {'tokens per target call' if key == 'tau' else 'speedup vs our greedy'}")
            ax.legend(fontsize=7)
    fig.suptitle(f"knowledge generation, Office: {res['device']}", fontsize=9)
    fig.tight_layout()
    png = path[:-5] + ".png"
    fig.savefig(png, dpi=110)
    return png


if __name__ == "__main__":
    print(main(sys.argv[1]))
