"""Benchmark results on disk (JSON: device, command, date, rows) and the plots made from them."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys

import torch


def device_name(device) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU: {cpu}, {torch.get_num_threads()} threads"


def write_results(rows: list[dict], path: str, device, command: str | None = None, extra: dict | None = None) -> str:
    """Write one run's rows atomically; returns the path."""
    doc = {"device": device_name(device), "command": command or " ".join(sys.argv),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, **(extra or {}), "rows": rows}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(path + ".tmp", path)
    return path


def _at_K(row: dict, metric: str) -> str:
    value = row.get(f"{metric}@{row['K']}")
    return "" if value is None else f"{value:.4f}"


# (header, width, row -> text) of the terminal table; the JSON rows keep every key
_MODE_SHORT = {"spec-strict": "strict", "spec-relaxed": "relaxed"}
_COLUMNS = (
    ("drafter", 9, lambda r: str(r.get("drafter") or "")[:9]),
    ("mode", 7, lambda r: _MODE_SHORT.get(r["mode"], r["mode"])[:7]),
    ("K", 3, lambda r: str(r["K"])),
    ("b", 3, lambda r: str(r["batch"])),
    ("ms", 8, lambda r: f"{r['median_ms']:.2f}"),
    ("xAR", 5, lambda r: f"{r['speedup_vs_ar']:.2f}" if "speedup_vs_ar" in r else ""),
    ("xHF", 5, lambda r: f"{r['speedup_vs_hf']:.2f}" if "speedup_vs_hf" in r else ""),
    ("calls", 5, lambda r: f"{r['target_calls']:.2f}" if "target_calls" in r else ""),
    ("mis", 4, lambda r: str(r["mismatches"]) if "mismatches" in r else ""),
    ("R@K", 6, lambda r: _at_K(r, "recall")),
    ("N@K", 6, lambda r: _at_K(r, "ndcg")),
)
TABLE_LEGEND = ("ms: median per call; xAR, xHF: speedup over our AR beam search / transformers' generate, same run; "
                "calls: target calls per user; mis: lists differing from AR's; R@K, N@K: Recall and NDCG at K")


def format_rows(rows: list[dict], width: int = 80) -> list[str]:
    """Benchmark rows as a plain table of at most `width` columns (header, one line per row, a legend)."""
    cols = [c for c in _COLUMNS if any(c[2](r) for r in rows)]  # e.g. no xHF where hf was not timed

    def line(cells: list[str]) -> str:  # text columns left-aligned, numbers right-aligned
        return " ".join(t.ljust(w) if name in ("drafter", "mode") else t.rjust(w)
                        for (name, w, _), t in zip(cols, cells)).rstrip()

    out = [line([c[0] for c in cols])] + [line([c[2](r) for c in cols]) for r in rows]
    return [x[:width] for x in out] + _wrap(TABLE_LEGEND, width)


def format_evals(events: list[dict], width: int = 80) -> list[str]:
    """Validation events of a training run ({"step", "epoch", metric...}) as a plain table, best marked."""
    keys = [k for k in ("recall@10", "ndcg@10", "accepted_levels", "target_calls") if any(k in e for e in events)]
    if not events or not keys:
        return ["(no validation)"]
    best = max(range(len(events)), key=lambda i: events[i].get(keys[0], float("-inf")))
    out = [f"{'step':>7} {'epoch':>5} " + " ".join(f"{k:>15}" for k in keys)]
    for i, e in enumerate(events):
        vals = " ".join(f"{e[k]:>15.4f}" if k in e else " " * 15 for k in keys)
        out.append(f"{e['step']:>7} {e.get('epoch', 0):>5} {vals}" + ("  best" if i == best else ""))
    return [x[:width] for x in out]


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)


def plot_results(path: str, png: str | None = None) -> str:
    """Speedup over AR vs K (one line per mode and batch) and the acceptance histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        doc = json.load(f)
    rows = [r for r in doc["rows"] if r.get("task") == "topk"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in sorted({r["mode"] for r in rows} - {"ar"}):
        for batch in sorted({r["batch"] for r in rows}):
            pts = sorted((r["K"], r["speedup_vs_ar"]) for r in rows
                         if r["mode"] == mode and r["batch"] == batch and "speedup_vs_ar" in r)
            if pts:
                ax1.plot(*zip(*pts), marker="o", label=f"{mode} b={batch}")
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax1.set(xlabel="K (beams)", ylabel="speedup over our AR beam search", title=doc["device"][:60])
    ax1.legend(fontsize=7)
    spec = [r for r in rows if r["mode"].startswith("spec") and any(k.startswith("accept_hist_") for k in r)]
    for r in spec[:8]:
        hist = [r.get(f"accept_hist_{i}", 0) for i in range(8)]
        while hist and not hist[-1]:
            hist.pop()
        total = sum(hist) or 1
        ax2.plot(range(len(hist)), [h / total for h in hist], marker="o", label=f"{r['mode']} K={r['K']} b={r['batch']}")
    ax2.set(xlabel="levels accepted in a round", ylabel="share of rounds", title="acceptance")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    png = png or os.path.splitext(path)[0] + ".png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def plot_acceptance(path: str, png: str | None = None) -> str:
    """A draft-alignment results file -> bars of accepted levels per round (top row) and speedup over
    AR (bottom row) for every drafter x spec mode, one column per K (the first batch size only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        doc = json.load(f)
    rows = [r for r in doc["rows"] if r.get("task") == "topk" and "drafter" in r]
    batch = min(r["batch"] for r in rows)
    rows = [r for r in rows if r["batch"] == batch]
    Ks, modes = sorted({r["K"] for r in rows}), sorted({r["mode"] for r in rows})
    drafters = list(dict.fromkeys(r["drafter"] for r in rows))  # training order
    fig, axes = plt.subplots(2, len(Ks), figsize=(3.2 * len(Ks) + 1, 6), squeeze=False)
    width = 0.8 / len(modes)
    for c, K in enumerate(Ks):
        at = {(r["drafter"], r["mode"]): r for r in rows if r["K"] == K}
        for m, mode in enumerate(modes):
            xs = [i + (m - (len(modes) - 1) / 2) * width for i in range(len(drafters))]
            for ax, key in zip(axes[:, c], ("accepted_levels", "speedup_vs_ar")):
                ax.bar(xs, [at.get((d, mode), {}).get(key, 0.0) for d in drafters], width, label=mode)
        axes[0, c].set_title(f"K={K}, batch {batch}")
        axes[1, c].axhline(1.0, color="grey", lw=0.8)
        for ax in axes[:, c]:
            ax.set_xticks(range(len(drafters)), drafters, rotation=45, ha="right", fontsize=8)
    axes[0, 0].set_ylabel("accepted levels per round")
    axes[1, 0].set_ylabel("speedup over AR beam search")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.suptitle(doc["device"][:80], fontsize=9)
    fig.tight_layout()
    png = png or os.path.splitext(path)[0] + ".png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def plot_pad_ablation(path: str, png: str | None = None) -> str:
    """A PAD ablation results file -> per drafter (one column each): acceptance per draft depth, one line
    per variant (top), and tau per variant (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        doc = json.load(f)
    rows = [r for r in doc["rows"] if r.get("mode") == "spec"]
    bases = list(dict.fromkeys(r["drafter"].split("+")[0] for r in rows))
    fig, axes = plt.subplots(2, len(bases), figsize=(5 * len(bases), 7), squeeze=False)
    for c, base in enumerate(bases):
        mine = [r for r in rows if r["drafter"].split("+")[0] == base]
        for r in mine:
            depths = sorted(int(k[8:]) for k in r if k.startswith("accept_d") and k[8:].isdigit())
            axes[0, c].plot(depths, [r[f"accept_d{j}"] for j in depths], marker="o", label=r["drafter"])
        axes[0, c].set(xlabel="draft depth", ylabel="P(accepted | reached)", title=base, ylim=(0, 1))
        axes[0, c].legend(fontsize=7)
        axes[1, c].bar(range(len(mine)), [r["tau"] for r in mine])
        axes[1, c].set_xticks(range(len(mine)), [r["drafter"] for r in mine], rotation=30, ha="right", fontsize=8)
        axes[1, c].set_ylabel("tau (tokens per target call)")
    fig.suptitle(f"{doc['device'][:60]}: M = {rows[0]['M'] if rows else '?'}, batch {rows[0]['batch'] if rows else '?'}",
                 fontsize=9)
    fig.tight_layout()
    png = png or os.path.splitext(path)[0] + ".png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def format_pad_ablation(rows: list[dict]) -> list[str]:
    """PAD ablation rows -> a short table: drafter, tau, acceptance at depths 0..3, per slot group, speedup."""
    lines = [f"{'drafter':24s} {'tau':>5s} {'d0':>5s} {'d1':>5s} {'d2':>5s} {'d3':>5s} {'lvl1':>5s} {'deep':>5s} "
             f"{'sep':>5s} {'x_ar':>5s} {'mis':>4s}"]
    for r in rows:
        cell = lambda k: f"{r[k]:5.2f}" if isinstance(r.get(k), float) else f"{'-':>5s}"  # noqa: E731
        lines.append(f"{r.get('drafter', r['mode']):24s} {r['tau']:5.2f} " + " ".join(cell(f"accept_d{j}") for j in range(4))
                     + " " + " ".join(cell(f"accept_slot_{g}") for g in ("level1", "deeper", "separator"))
                     + f" {cell('speedup_vs_ar')} {r.get('mismatches', 0):4d}")
    return lines
