"""The `recspec` command line: builds configs from flags and calls the library (no logic of its own)."""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import typer

from recspec.config import (CPU_TREE_BUDGET, FIT_CHOICES, GPU_TREE_BUDGET, VERIFY_RULES, DecodeConfig, EngineConfig,
                            TrainConfig, TreeConfig)
from recspec.errors import RecSpecError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Fast generative recommendation with speculative decoding.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect data and build semantic IDs.")
app.add_typer(data_app, name="data")
distill_app = typer.Typer(no_args_is_help=True, help="Draft alignment: teacher data, draft training, the experiment.")
app.add_typer(distill_app, name="distill")
knowledge_app = typer.Typer(no_args_is_help=True, help="Item knowledge text (LASER): train the text model, generate.")
app.add_typer(knowledge_app, name="knowledge")

DATA = typer.Argument(..., help="data folder (sequential txt, LC-Rec json or RecBole atomic) or 'ml-100k'")
INDEX_DIR = typer.Option(None, "--index-dir", help="where built SIDs are kept (catalogues without an index)")

BENCH_MODES = ("ar", "spec-strict", "spec-relaxed", "hf")
SPLITS = ("test", "valid")


def _positive(value):
    """typer callback: every value (an int or a list of ints) must be >= 1."""
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if v < 1:
            raise typer.BadParameter(f"must be >= 1, got {v}")
    return value


def _one_of(*choices: str):
    """typer callback factory: the value must be one of `choices`."""
    def check(value: str) -> str:
        if value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return check


def _positive_or_none(value):
    """typer callback: an optional int, >= 1 where given."""
    return value if value is None else _positive(value)


def _check_K(K: int | list[int], catalog, flag: str = "--K") -> None:
    """K (or --listwise M) must fit the catalogue: at most one list entry per distinct item."""
    n = catalog.trie.num_sids
    for k in K if isinstance(K, (list, tuple)) else [K]:
        if k > n:
            raise RecSpecError(f"{flag} {k}: above the {n} distinct items of {catalog.data.name}")


def _check_listwise(cfg: DecodeConfig, draft: Optional[str]) -> None:
    """A list is drafted by a draft model, in a tree of explicit shape (the trie drafter and the auto shape are
    one item's)."""
    from recspec.decoding.drafters import TRIE

    if draft == TRIE:
        raise RecSpecError("--listwise with --draft trie: the trie drafter drafts one item's SID; give a draft "
                           "checkpoint (or no --draft: plain greedy)")
    if draft and not cfg.tree.explicit:
        raise RecSpecError("--listwise with --draft: give the tree's shape (--draft-beams / --gamma); the auto shape "
                           "is derived from one item's SID trie, not a list")


def _check_draft(verify: str, draft: Optional[str]) -> None:
    if verify == "relaxed" and not draft:
        raise RecSpecError("--verify relaxed: needs --draft (a draft checkpoint or 'trie'); without a draft there is "
                           "nothing to verify")


def _bench_modes(text: str, drafts: list[str]) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in BENCH_MODES]
    if bad or not modes:
        raise RecSpecError(f"--modes {text!r}: {bad[0] if bad else 'empty'!r} is not one of {', '.join(BENCH_MODES)}")
    spec = [m for m in modes if m.startswith("spec-")]
    if spec and not drafts:
        raise RecSpecError(f"--modes {text!r}: {spec[0]} needs --draft (a draft checkpoint or 'trie')")
    return modes


def _model_index_dir(model: str) -> str:
    """Where a checkpoint's built SIDs are: the first of its run folders (parent, grandparent) holding an index."""
    folder = os.path.dirname(os.path.normpath(model))
    for candidate in (folder, os.path.dirname(folder)):
        if candidate and os.path.isfile(os.path.join(candidate, "index.json")):
            return candidate
    return folder


def _console():
    from rich.console import Console

    return Console(stderr=True)


@data_app.command("inspect")
def data_inspect(data: str = DATA, index_dir: Optional[str] = INDEX_DIR):
    """Counts of users, items and interactions; per SID level the codes used and the fan-out; collisions."""
    import dataclasses

    from recspec.data.catalog import open_catalog
    from recspec.data.sids import collision_stats, level_stats

    cat = open_catalog(data, index_dir=index_dir)
    d = cat.data
    out = {"name": d.name, "items": d.num_items, "train_sequences": len(d.train),
           "train_interactions": sum(map(len, d.train)), "valid_examples": len(d.valid),
           "test_examples": len(d.test), "index": cat.index_path, "sid_levels": cat.index.num_levels,
           "levels": [dataclasses.asdict(s) for s in level_stats(cat.index)],
           "collisions": dataclasses.asdict(collision_stats(cat.index)), "distinct_sids": cat.trie.num_sids,
           "vocab_size": cat.vocab.size}
    print(json.dumps(out, indent=2))


@data_app.command("build-sids")
def data_build_sids(data: str = DATA, out: str = typer.Option(..., help="index json to write (e.g. RUN/index.json, "
                                                                        "then --index-dir RUN)"),
                    levels: int = typer.Option(3, help="code levels (a disambiguating level is added where items collide)"),
                    codebook_size: int = typer.Option(0, help="codes per level; 0: sized from the catalogue"),
                    dim: int = 32, seed: int = 0):
    """Build residual k-means SIDs from the interactions (any index the data has is ignored) and save the index."""
    import dataclasses

    from recspec.data.catalog import SIDBuild, build_index, data_folder, detect_format, read_data
    from recspec.data.sids import collision_stats

    folder = data_folder(data)
    fmt = detect_format(folder)
    split = read_data(folder, fmt)
    index = build_index(folder, fmt, split, SIDBuild(levels, codebook_size, dim, seed))
    index.save(out)
    print(json.dumps({"out": out, "items": index.num_items, "levels": index.num_levels,
                      "level_sizes": list(index.level_sizes), **dataclasses.asdict(collision_stats(index))}))


@app.command()
def train(data: str = DATA, out: str = typer.Option(..., help="run folder (checkpoints, resume)"),
          size: str = typer.Option("small", help="model preset: tiny, draft, demo, small, deep, base, gpu-0.5b"),
          role: str = typer.Option("target", help="target or draft"), index_dir: Optional[str] = INDEX_DIR,
          epochs: int = typer.Option(10, callback=_positive, help="schedule length in epochs (unless --steps)"),
          steps: int = typer.Option(0, help="schedule length in optimiser steps, fixed up front; the cosine decay ends "
                                            "there (0: --epochs)"),
          batch_size: int = typer.Option(64, callback=_positive), lr: float = 2e-3, warmup_steps: int = 100,
          weight_decay: float = 0.01, dropout: float = typer.Option(0.0, help="training-only residual dropout"),
          eval_every: int = typer.Option(0, help="validate every N steps (0: once per epoch)"),
          eval_users: int = typer.Option(0, help="validation users (0: all)"),
          patience: int = typer.Option(0, help="stop after N validations without a new best (0: never)"),
          fit: str = typer.Option("train", help="train: the run above (then the final fit); train+valid: fit on train "
                                                "+ valid directly for --steps, no validation (OUT/last)",
                                  callback=_one_of(*FIT_CHOICES)),
          final_fit: bool = typer.Option(True, "--final-fit/--no-final-fit",
                                         help="then fit a fresh model on train + valid for the best step's epochs "
                                              "(OUT/final/last: the test-time model)"),
          precision: str = typer.Option("auto", help="fp32, bf16 (autocast per step) or auto (bf16 on a GPU)"),
          max_steps: int = 0, time_limit_s: float = 0.0, threads: int = 0, seed: int = 0, device: str = "cpu"):
    """Train a target (or a plain cross-entropy draft) with the language-model loss on every next item:
    a run on the train period validated on every validation user, then the final fit on train + valid."""
    from recspec.config import ModelConfig
    from recspec.data.catalog import open_catalog
    from recspec.training.recipe import run_recipe

    cat = open_catalog(data, index_dir=index_dir or out)
    cfg = _checked(TrainConfig, epochs=epochs, steps=steps, fit=fit, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                   weight_decay=weight_decay, eval_every=eval_every, eval_users=eval_users, patience=patience,
                   precision=precision, max_steps=max_steps, time_limit_s=time_limit_s, threads=threads, seed=seed)
    mcfg = _checked(ModelConfig.preset, cat.vocab.size, size, dropout=dropout)
    evals: list[dict] = []
    res = run_recipe(mcfg, cat, cfg, out, device, final_fit=final_fit and fit == "train", role=role,
                     on_log=_collect(evals))
    _print_evals(evals)
    print(json.dumps({"checkpoint": res.checkpoint, "steps": res.select.steps, "best_step": res.select.best_step,
                      "best_valid_recall@10": res.select.best_recall10, "stop_reason": res.select.stop_reason,
                      "final_fit_steps": res.final_steps, "validated_checkpoint": res.select.checkpoint,
                      "seconds": round(res.select.seconds + (res.final.seconds if res.final else 0.0), 1)}))


# The draft tree: every shape flag at auto (the default) derives it from the catalogue's trie, K and --tree-budget;
# setting any of them gives an explicit shape (the unset ones: N 40, gamma 3, expand 2, no depths / widths).
DRAFT_BEAMS = typer.Option(None, help="N: most draft nodes per tree level, >= K [default: auto]", show_default=False)
GAMMA = typer.Option(None, help="draft depth: levels drafted per round [default: auto]", show_default=False)
EXPAND = typer.Option(None, help="deeper tree levels extend only the draft's best expand*K nodes (0: all N) [default: auto]",
                      show_default=False)
DEPTHS = typer.Option("auto", help="draft depth by the SID level a round starts from, e.g. 1,3,2 (gamma past the end)")
TEMPERATURE = typer.Option(1.0, help="relaxed: sample from cumulative log-probs / temperature (-> the top-K search as it -> 0)")
WIDTHS = typer.Option("auto", help="most drafted nodes per tree level by the SID level it drafts, each <= N, e.g. 128,16,16 "
                                   "(N past the end)")
TREE_BUDGET = typer.Option(None, help="auto shape: most tree nodes per target call "
                                      f"[default: {GPU_TREE_BUDGET} on a GPU, {CPU_TREE_BUDGET} on a CPU]", show_default=False)
EOS = typer.Option(False, "--eos/--no-eos", help="score <eos> after an item's L codes as an (L+1)-th target call, as "
                                                 "transformers' generate does (off: L calls, score = sum of code log-probs)")
EXCLUDE_HISTORY = typer.Option(False, "--exclude-history", help="never recommend an item of the user's history "
                                                                "(default: history items may be recommended)")
LISTWISE = "M: greedily generate one list of M distinct items per user (K = 1 under the item-list constraint; " \
           "with --draft, greedy tree speculation: give --draft-beams / --gamma)"


def parse_depths(text: str, what: str = "depths") -> tuple[int, ...] | None:
    """--depths '1,3,2' -> (1, 3, 2) (also --widths); 'auto' -> None; a bad entry is a one-line error naming it."""
    from recspec.config import parse_shape_list

    try:
        return parse_shape_list(text, what=what)
    except ValueError as e:
        raise RecSpecError(f"--{e}") from None


def _check_tree(tree: TreeConfig, Ks) -> None:
    """An explicit tree shape the engine cannot honour (at any of the K), or a bad --tree-budget: one-line error."""
    from recspec.decoding.tree_shape import check_budget, check_shape, given_shape

    shape = given_shape(tree.draft_beams, tree.gamma, tree.depths, tree.widths, tree.expand)
    _checked(check_budget, tree.budget, shape is not None)
    for K in Ks if shape is not None else ():
        _checked(check_shape, shape, K)


def _tree_cfg(draft_beams, gamma, expand=None, depths="auto", widths="auto", tree_budget=None) -> TreeConfig:
    """The tree flags -> TreeConfig (each flag is the field of its name; --tree-budget is `budget`)."""
    return TreeConfig(draft_beams=draft_beams, gamma=gamma, expand=expand, depths=parse_depths(depths),
                      widths=parse_depths(widths, "widths"), budget=tree_budget)


def _decode_cfg(K, batch_size, draft_beams, gamma, verify, seed, expand=None, depths="auto", widths="auto",
                temperature=1.0, tree_budget=None, eos=False, exclude_history=False) -> DecodeConfig:
    if not temperature > 0:
        raise RecSpecError(f"--temperature {temperature}: must be > 0")
    if verify == "topk-beta" and K != 1:
        raise RecSpecError(f"--verify topk-beta: a greedy rule (one item at a time), needs --K 1, got --K {K}")
    tree = _tree_cfg(draft_beams, gamma, expand, depths, widths, tree_budget)
    _check_tree(tree, [K])
    return DecodeConfig(K=K, batch_size=batch_size, verify=verify, seed=seed, temperature=temperature, eos=eos,
                        exclude_history=exclude_history, tree=tree)


# SASRec, the baseline of `eval --baselines` and of the benchmark's quality gate: tuned over this grid on the valid
# users (each grid point trained on the train period), then refit on train + valid for the test users
SASREC_STEPS = typer.Option(2000, callback=_positive, help="SASRec: steps per grid point (early-stopped on valid)")
SASREC_HIDDEN = typer.Option("64,128", help="SASRec grid: widths")
SASREC_DROPOUT = typer.Option("0.2,0.5", help="SASRec grid: dropout rates")
SASREC_LR = typer.Option("1e-3,3e-3", help="SASRec grid: learning rates")


@app.command("eval")
def evaluate(data: str = DATA, model: str = typer.Option(..., help="target checkpoint folder"),
             draft: Optional[str] = typer.Option(None, help="draft checkpoint, or 'trie' (no model: the trie's children): speculative decoding"),
             split: str = typer.Option("test", help="test or valid", callback=_one_of(*SPLITS)),
             K: int = typer.Option(DecodeConfig.K, "--K", callback=_positive, help="items per user (target beams)"),
             verify: str = typer.Option("strict", help="strict (exact), relaxed (sampling) or topk-beta (greedy, --K 1)", callback=_one_of(*VERIFY_RULES)),
             draft_beams: Optional[int] = DRAFT_BEAMS, gamma: Optional[int] = GAMMA,
             expand: Optional[float] = EXPAND, depths: str = DEPTHS, widths: str = WIDTHS,
             tree_budget: Optional[int] = TREE_BUDGET, temperature: float = TEMPERATURE, batch_size: int = 64, users: int = 0, index_dir: Optional[str] = INDEX_DIR, seed: int = 0, device: str = "cpu",
             popularity: bool = typer.Option(True, help="also score the popularity baseline"),
             eos: bool = EOS, exclude_history: bool = EXCLUDE_HISTORY,
             baselines: bool = typer.Option(False, "--baselines", help="fit popularity, item transitions and SASRec "
                                            "on the data the split allows (test: train + valid) and compare, with 95% "
                                            "bootstrap intervals and the quality gate; needs --K >= 10 and all users"),
             sasrec_steps: int = SASREC_STEPS, sasrec_hidden: str = SASREC_HIDDEN, sasrec_dropout: str = SASREC_DROPOUT,
             sasrec_lr: str = SASREC_LR,
             listwise: Optional[int] = typer.Option(None, "--listwise", callback=_positive_or_none,
                                                    help=LISTWISE + "; adds Recall@M / NDCG@M rows with 95% intervals, "
                                                         "mode greedy-list beside the target's top-M beam search"),
             out: Optional[str] = typer.Option(None, help="with --baselines: quality results JSON "
                                                          "[default: runs/eval/quality_<data>_<split>.json]; with "
                                                          "--listwise: the listwise rows as results JSON")):
    """Recall@k / NDCG@k on the test (or valid) users, beside the popularity baseline (--baselines: beside
    popularity, item transitions and SASRec, with intervals and the quality gate; --listwise M: the greedy
    list of M items beside top-M beam search)."""
    from recspec.evaluation.evaluate import evaluate_popularity
    from recspec.recommender import Recommender

    _check_draft(verify, draft)
    if baselines and (K < 10 or users):
        raise RecSpecError("--baselines: the quality gate compares Recall@10 / NDCG@10 on every user of the split; "
                           "give --K >= 10 and no --users")
    if baselines and listwise:
        raise RecSpecError("--listwise: not with --baselines (run them as two commands)")
    setup = _sasrec_setup(sasrec_steps, sasrec_hidden, sasrec_dropout, sasrec_lr, seed) if baselines else None
    cfg = _decode_cfg(K, batch_size, draft_beams, gamma, verify, seed, expand, depths, widths, temperature, tree_budget,
                      eos, exclude_history)
    if listwise:
        _check_listwise(cfg, draft)
    rec = Recommender.load(data, model, draft, cfg, index_dir=index_dir or _model_index_dir(model), device=device)
    _check_K(K, rec.catalog)
    if listwise:
        _check_K(listwise, rec.catalog, "--listwise")
    examples = list(rec.catalog.data.test if split == "test" else rec.catalog.data.valid)[: users or None]
    if baselines:
        return _eval_baselines(rec, model, examples, split, K, setup, device, exclude_history, seed, out, data)
    out_metrics = {"recspec": rec.evaluate(examples, K=K)}
    if popularity:
        out_metrics["popularity"] = evaluate_popularity(rec.catalog.data, rec.catalog.trie, examples,
                                                        [k for k in (1, 3, 5, 10, 20) if k <= K])
    if listwise:
        out_metrics["listwise"] = rec.evaluate_list(examples, listwise, split, seed=seed)
        if out:
            from recspec.evaluation.report import write_results

            write_results(out_metrics["listwise"], out, device, extra={"data": data, "checkpoint": model})
    print(json.dumps(out_metrics, indent=2))


def _sasrec_setup(steps: int, hidden: str, dropout: str, lr: str, seed: int):
    from recspec.training.fit_baselines import SASRecSetup
    from recspec.training.sasrec import SASRecGrid, SASRecTrainConfig

    grid = SASRecGrid(hidden=_ints(hidden, "--sasrec-hidden"), dropout=_floats(dropout, "--sasrec-dropout"),
                      lr=_floats(lr, "--sasrec-lr"))
    every = max(1, steps // 10)
    return SASRecSetup(train=SASRecTrainConfig(steps=steps, eval_every=every, warmup_steps=min(100, steps // 10),
                                               seed=seed), grid=grid)


def _eval_baselines(rec, model: str, examples, split: str, K: int, setup, device: str, exclude_history: bool,
                    seed: int, out: Optional[str], data: str) -> None:
    """The target's lists beside the baselines' -> quality rows (printed table + results JSON)."""
    from recspec.evaluation.quality import format_quality
    from recspec.evaluation.report import write_results
    from recspec.models.hf import trained_on
    from recspec.training.fit_baselines import compare_with_baselines

    res, _ = rec.recommend_internal([e.history for e in examples], K)
    ks = sorted({10, K})
    rows, info = compare_with_baselines(rec.catalog, split, res.sids.tolist(), ks, setup, device, exclude_history,
                                        seed=seed)
    rows[0]["fit"] = trained_on(model)  # the target row: what its checkpoint was trained on
    rows[0]["checkpoint"] = model
    name = rec.catalog.data.name
    path = out or os.path.join("runs", "eval", f"quality_{name}_{split}.json")
    write_results(rows, path, device, extra={"data": data, "sasrec": info.get("sasrec")})
    print("\n".join(format_quality(rows)))
    print(f"results: {path}")


@app.command()
def recommend(data: str = DATA, model: str = typer.Option(..., help="target checkpoint folder"),
              input: str = typer.Option("-", "--input", help="JSON lines {\"history\": [item ids]} ('-': stdin); "
                                        "ids as the dataset's interaction files write them"),
              draft: Optional[str] = typer.Option(None, help="draft checkpoint, or 'trie' (no model: the trie's children): speculative decoding"),
              verify: str = typer.Option("strict", help="strict (exact), relaxed (sampling) or topk-beta (greedy, --K 1)", callback=_one_of(*VERIFY_RULES)),
              draft_beams: Optional[int] = DRAFT_BEAMS, gamma: Optional[int] = GAMMA,
              expand: Optional[float] = EXPAND, depths: str = DEPTHS, widths: str = WIDTHS, tree_budget: Optional[int] = TREE_BUDGET,
              temperature: float = TEMPERATURE, K: int = typer.Option(DecodeConfig.K, "--K", callback=_positive, help="items per user (target beams)"),
              batch_size: int = DecodeConfig.batch_size,
              index_dir: Optional[str] = INDEX_DIR,
              seed: int = 0, device: str = "cpu", eos: bool = EOS, exclude_history: bool = EXCLUDE_HISTORY,
              listwise: Optional[int] = typer.Option(None, "--listwise", callback=_positive_or_none,
                                                    help=LISTWISE + "; printed in generated order, --K unused")):
    """Histories in, top-K distinct items (with titles where known) out, as JSON lines; item ids in and
    out are the dataset's own (sequential_*.txt: 1-based, LC-Rec inter.json: 0-based, RecBole: .inter tokens).
    --listwise M: each user's greedy list of M items instead, in generated order, with the list's score."""
    from recspec.recommender import Recommender

    _check_draft(verify, draft)
    if listwise and eos:
        raise RecSpecError("--eos scores <eos> after one item's codes; a list (--listwise) scores each item's <eos> "
                           "itself: leave --eos off")
    cfg = _decode_cfg(1 if listwise else K, batch_size, draft_beams, gamma, verify, seed, expand, depths, widths,
                      temperature, tree_budget, eos, exclude_history)
    if listwise:
        _check_listwise(cfg, draft)
    names, histories = _read_histories(input)
    rec = Recommender.load(data, model, draft, cfg, index_dir=index_dir or _model_index_dir(model), device=device)
    if listwise:
        return _recommend_lists(rec, histories, names, listwise)
    _check_K(K, rec.catalog)
    res, _ = rec.recommend(histories, K, names=names)
    titles, index = rec.catalog.data.titles, rec.catalog.index
    for h, items, internal, scores in zip(histories, res.items, res.internal.tolist(), res.scores.tolist()):
        recs = [{"item": item, "sid": index.sid_string(i), "title": titles.get(i), "score": round(sc, 5)}
                for item, i, sc in zip(items, internal, scores)]
        print(json.dumps({"history": h, "recommendations": recs}))


def _recommend_lists(rec, histories, names: list[str], M: int) -> None:
    """recommend --listwise M: one JSON line per history, its greedy list in generated order and its score."""
    _check_K(M, rec.catalog, "--listwise")
    res, _ = rec.recommend_list(histories, M, names=names)
    titles, index = rec.catalog.data.titles, rec.catalog.index
    for h, items, internal, score in zip(histories, res.items, res.internal.tolist(), res.scores.tolist()):
        recs = [{"item": item, "sid": index.sid_string(i), "title": titles.get(i)}
                for item, i in zip(items, (i for i in internal if i >= 0))]
        print(json.dumps({"history": h, "recommendations": recs, "score": round(score, 5)}))


def _item_id(x, path: str, line: int, j: int) -> int | str:
    """One history entry: an item id as the data files write it (a JSON integer, or a string such as a
    RecBole token); a fraction, a boolean or anything else is refused."""
    if isinstance(x, bool) or not isinstance(x, (int, str)) or (isinstance(x, str) and not x.strip()):
        raise RecSpecError(f"{path}:{line}: history[{j}] = {json.dumps(x)} is not an item id (an integer or a token)")
    return x.strip() if isinstance(x, str) else x


def _read_histories(path: str) -> tuple[list[str], list[list[int | str]]]:
    """JSON lines of {"history": [ids]} (or bare lists) -> (each history's "FILE:LINE", the histories)."""
    lines = sys.stdin.read().splitlines() if path == "-" else open(path, encoding="utf-8").read().splitlines()
    names, out = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            hist = obj["history"] if isinstance(obj, dict) else obj
            if not isinstance(hist, list):
                raise TypeError(f"history is a {type(hist).__name__}, not a list")
        except (ValueError, KeyError, TypeError) as e:
            raise RecSpecError(f"{path}:{n}: expected {{\"history\": [item ids]}} ({type(e).__name__}: {e})") from None
        names.append(f"{path}:{n}")
        out.append([_item_id(x, path, n, j) for j, x in enumerate(hist)])
    if not out:
        raise RecSpecError(f"{path}: no histories given")
    return names, out


@app.command()
def demo(out: str = typer.Option("runs/demo", help="run folder"), epochs: int = typer.Option(4, callback=_positive),
         max_steps: int = typer.Option(0, help="stop training after this many steps (0: all epochs)"), size: str = "demo"):
    """The main job: SIDs for MovieLens-100K, a small target trained on the CPU, evaluation against popularity,
    item transitions and SASRec (all fitted on the train period), with 95% intervals and the quality gate."""
    from recspec.demo import DemoConfig, run_demo
    from recspec.evaluation.quality import format_quality

    report = run_demo(DemoConfig(out=out, epochs=epochs, max_steps=max_steps, size=size))
    print(f"MovieLens-100K, {report['users_test']} test users (leave-one-out); every model fitted on the train period")
    print("\n".join(format_quality(report["quality"])))
    print(f"report: {os.path.join(out, 'report.json')}  ({report['seconds']} s)")


@app.command()
def bench(data: str = DATA, target: str = typer.Option(..., help="target checkpoint"),
          draft: list[str] = typer.Option([], help="draft checkpoint, or NAME=CHECKPOINT ('trie': the model-free trie "
                                                  "drafter); repeat to time several drafts against one AR run (rows carry drafter NAME)"),
          K: list[int] = typer.Option([1, 5, 10, 20], "--K", callback=_positive),
          batch: list[int] = typer.Option([1, 32], "--batch", callback=_positive),
          users: int = 200, hf_users: int = 0, warmup: int = 3, draft_beams: Optional[int] = DRAFT_BEAMS,
          gamma: Optional[int] = GAMMA, expand: Optional[float] = EXPAND, depths: str = DEPTHS, widths: str = WIDTHS,
          tree_budget: Optional[int] = TREE_BUDGET, temperature: float = TEMPERATURE,
          modes: str = typer.Option("ar,spec-strict,spec-relaxed,hf", help=f"comma-separated, of {', '.join(BENCH_MODES)}"),
          split: str = typer.Option("test", help="test or valid", callback=_one_of(*SPLITS)),
          out: str = typer.Option("runs/bench/topk.json", help="results JSON (a PNG is written beside it)"),
          threads: int = 0, device: str = "cpu", cuda_graphs: bool = False,
          compile: bool = typer.Option(False, help="rounds through torch.compile (fixed shapes; captured with --cuda-graphs)"),
          seed: int = 0,
          index_dir: Optional[str] = INDEX_DIR, eos: bool = EOS, exclude_history: bool = EXCLUDE_HISTORY,
          allow_ungated: bool = typer.Option(False, "--allow-ungated", help="time a target that fails the quality "
                                             "gate (smoke tests only; never for results)"),
          sasrec_steps: int = SASREC_STEPS, sasrec_hidden: str = SASREC_HIDDEN, sasrec_dropout: str = SASREC_DROPOUT,
          sasrec_lr: str = SASREC_LR):
    """Time AR, strict and relaxed speculative beam search and HF generate in one run -> JSON + PNG.

    First the quality gate, in the same run: the target's Recall@10 / NDCG@10 on every test user against
    popularity, item transitions and SASRec (fitted on train + valid); a target below the best baseline
    is not timed (unless --allow-ungated), and every row carries `gate`."""
    import torch

    from recspec.decoding.drafters import TRIE
    from recspec.evaluation.bench import BenchConfig, run_bench
    from recspec.evaluation.report import plot_acceptance, plot_results, write_results
    from recspec.models.hf import check_fits, load_checkpoint
    from recspec.recommender import Recommender

    if threads:
        torch.set_num_threads(threads)
    named = _named_drafts(draft)
    mode_list = _bench_modes(modes, draft)
    tree = _tree_cfg(draft_beams, gamma, expand, depths, widths, tree_budget)
    _check_tree(tree, K)
    if not temperature > 0:
        raise RecSpecError(f"--temperature {temperature}: must be > 0")
    rec = Recommender.load(data, target, None, index_dir=index_dir or _model_index_dir(target), device=device)
    _check_K(K, rec.catalog)
    drafts = {}
    for name, path in named.items():
        if path == TRIE:  # the model-free trie drafter
            drafts[name] = TRIE
            continue
        drafts[name], meta = load_checkpoint(path, device=device)
        check_fits(meta, rec.catalog.vocab, rec.catalog.index.fingerprint(), path)
    decode = DecodeConfig(temperature=temperature, seed=seed, eos=eos, exclude_history=exclude_history, tree=tree,
                          engine=EngineConfig(cuda_graphs=cuda_graphs, compile=compile))
    cfg = BenchConfig(Ks=tuple(K), batches=tuple(batch), users=users, warmup=warmup, modes=mode_list,
                      hf_users=hf_users, decode=decode)
    hf_model = None
    if "hf" in cfg.modes:
        try:
            from recspec.evaluation.hf_baseline import to_transformers

            hf_model = to_transformers(rec.target)
        except ImportError:
            _console().log("transformers is not installed: skipping the hf mode")
    examples = list(rec.catalog.data.test if split == "test" else rec.catalog.data.valid)
    setup = _sasrec_setup(sasrec_steps, sasrec_hidden, sasrec_dropout, sasrec_lr, seed)
    quality = _quality_gate(rec, target, setup, device, exclude_history, seed, allow_ungated)
    from tqdm import tqdm

    per_group = sum(1 if m in ("ar", "hf") else len(drafts) for m in cfg.modes if m != "hf" or hf_model is not None)
    with tqdm(total=len(cfg.Ks) * len(cfg.batches) * per_group, desc="bench", unit="row") as bar:
        rows = run_bench(rec.target, drafts or None, rec.catalog, examples, cfg, device=device, hf_model=hf_model,
                         on_row=lambda r: bar.update())
    for r in rows:
        r["gate"] = quality[0]["gate"]
    path = write_results(rows, out, device, extra={"quality": quality})
    png = plot_acceptance(path) if len(drafts) > 1 else plot_results(path)
    _print_rows(rows)
    print(f"quality gate: {'pass' if quality[0]['gate'] else 'FAIL (timed only because of --allow-ungated)'}")
    print(f"results: {path}  plot: {png}")


def _quality_gate(rec, target: str, setup, device: str, exclude_history: bool, seed: int,
                  allow_ungated: bool) -> list[dict]:
    """The benchmark's quality gate on every test user -> quality rows (the target's first, with `gate`);
    a target that fails it is refused unless allow_ungated."""
    from recspec.evaluation.quality import format_quality
    from recspec.models.hf import trained_on
    from recspec.training.fit_baselines import compare_with_baselines

    test = list(rec.catalog.data.test)
    res, _ = rec.with_config(K=10, eos=False, exclude_history=exclude_history).recommend_internal([e.history for e in test])
    rows, _ = compare_with_baselines(rec.catalog, "test", res.sids.tolist(), (10,), setup, device, exclude_history,
                                     seed=seed)
    rows[0]["fit"] = trained_on(target)
    print("\n".join(format_quality(rows)), file=sys.stderr)
    if not rows[0]["gate"] and not allow_ungated:
        raise RecSpecError(f"{target}: below the best baseline on {rec.catalog.data.name}'s test users (the quality "
                           "gate, table above); not timed (--allow-ungated times it anyway, for smoke tests)")
    return rows


def _named_drafts(specs: list[str]) -> dict[str, str]:
    """['ce=runs/a', 'runs/b'] -> {'ce': 'runs/a', 'b': 'runs/b'}; an unnamed draft is named after its folder
    (the run folder when the checkpoint is its best/ or last/)."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            parts = os.path.normpath(path).split(os.sep)
            name = parts[-2] if len(parts) > 1 and parts[-1] in ("best", "last") else parts[-1]
        if not name or not path:
            raise typer.BadParameter(f"--draft {spec!r}: expected CHECKPOINT or NAME=CHECKPOINT")
        if name in out:
            raise typer.BadParameter(f"--draft: the name {name!r} is given twice (use NAME=CHECKPOINT)")
        out[name] = path
    return out


def _print_rows(rows: list[dict]) -> None:
    from recspec.evaluation.report import format_rows

    print("\n".join(format_rows(rows)))


# --- distill ---------------------------------------------------------------------------------------
TARGET = typer.Option(..., help="target checkpoint folder")
TEACHER = typer.Option(..., help="teacher data folder (recspec distill teacher)")


def _checked(build, *args, **kw):
    """Build a config / model config; a bad value becomes a one-line error."""
    try:
        return build(*args, **kw)
    except ValueError as e:
        raise RecSpecError(str(e)) from None


def _catalog_and_target(data: str, target: str, index_dir: Optional[str], device: str, threads: int):
    import torch

    from recspec.data.catalog import open_catalog
    from recspec.models.hf import check_fits, load_checkpoint

    if threads:
        torch.set_num_threads(threads)
    cat = open_catalog(data, index_dir=index_dir or _model_index_dir(target))
    model, meta = load_checkpoint(target, device=device)
    check_fits(meta, cat.vocab, cat.index.fingerprint(), target)
    return cat, model


def _collect(events: list[dict]):
    """on_log callback keeping validation events (the progress bar shows the rest)."""
    return lambda r: events.append(r) if r.get("event") == "eval" else None


def _print_evals(events: list[dict]) -> None:
    from recspec.evaluation.report import format_evals

    print("\n".join(format_evals(events)), file=sys.stderr)


@distill_app.command("teacher")
def distill_teacher(data: str = DATA, target: str = TARGET,
                    out: str = typer.Option(..., help="teacher data folder (a rerun resumes it)"),
                    K_prime: int = typer.Option(20, "--K-prime", help="teacher beams per example"),
                    batch_size: int = typer.Option(64, help="examples per target call"),
                    max_examples: int = typer.Option(0, help="first N training examples only (0: all)"),
                    keep: int = typer.Option(64, help="log-probabilities stored per position"),
                    index_dir: Optional[str] = INDEX_DIR, threads: int = 0, device: str = "cpu"):
    """Write the target's teacher data (ground-truth and top-K' beam distributions) for every training example."""
    import dataclasses

    from recspec.training.teacher import generate_teacher

    cat, model = _catalog_and_target(data, target, index_dir, device, threads)
    info = generate_teacher(model, cat.trie, cat.vocab, cat.index, cat.data, out, K_prime=K_prime,
                            batch_size=batch_size, max_examples=max_examples or None, keep=keep)
    print(json.dumps(dataclasses.asdict(info)))


def _open_teacher(folder: str, target, cat):
    from recspec.training.distill import check_teacher
    from recspec.training.teacher import TeacherData

    teacher = TeacherData(folder)
    check_teacher(teacher, target, cat)
    return teacher


@distill_app.command("train")
def distill_train(data: str = DATA, target: str = TARGET,
                  teacher: Optional[str] = typer.Option(None, help="teacher data folder (recspec distill teacher); "
                                                        "the teacher objectives need it, feature-head and draft-unrolled not"),
                  objective: str = typer.Option(..., help="ce, wordkd, tvd, seqkd, atspeed-s, atspeed-r (teacher data), "
                                                          "feature-head or draft-unrolled (the target's own outputs)"),
                  out: str = typer.Option(..., help="run folder (checkpoints, resume)"),
                  size: str = typer.Option("draft", help="draft model preset: tiny, draft, demo, small, ..."),
                  epochs: int = 10, lr: float = 1e-3, batch_size: int = 64, alpha: float = 0.7,
                  K: int = typer.Option(20, "--K", help="AtSpeed-S: the student top-K its reverse KL keeps apart (DistillConfig.K)"),
                  beta: float = typer.Option(1.0, help="AtSpeed-S: weight of the density (entropy) term"), warmup_steps: int = 100,
                  eval_users: int = 200, eval_every: int = 0, eval_K: int = typer.Option(10, "--eval-K"),
                  draft_beams: int = 40, gamma: int = 3, max_steps: int = 0, time_limit_s: float = 0.0,
                  steps: int = typer.Option(2000, help="feature-head, draft-unrolled: optimiser steps (UnrollConfig.steps)"),
                  unroll: int = typer.Option(3, help="feature-head, draft-unrolled: unrolled draft steps k_max"),
                  pad_slot: bool = typer.Option(False, help="feature-head, draft-unrolled: PAD slot embeddings"),
                  pad_step: bool = typer.Option(False, help="feature-head, draft-unrolled: PAD step embeddings"),
                  pad_gate: bool = typer.Option(True, help="feature-head, draft-unrolled: gate the PAD step embedding"),
                  feature_weight: float = typer.Option(1.0, help="feature-head: weight of the SmoothL1 feature loss"),
                  ce_weight: float = typer.Option(0.1, help="feature-head: weight of the soft cross-entropy"),
                  threads: int = 0, seed: int = 0, device: str = "cpu", index_dir: Optional[str] = INDEX_DIR):
    """Train a drafter: a draft on teacher data with one alignment objective (best/ = most accepted levels on
    validation), or a feature head / PAD draft on the target's own outputs for exactly --steps steps (last/)."""
    import dataclasses

    import torch

    from recspec.config import UNROLLED_OBJECTIVES, DistillConfig, ModelConfig, UnrollConfig
    from recspec.models.decoder import Decoder
    from recspec.training.distill import distill

    if objective in UNROLLED_OBJECTIVES:
        cfg = _checked(UnrollConfig, objective=objective, steps=steps, batch_size=batch_size, lr=lr,
                       warmup_steps=warmup_steps, unroll=unroll, feature_weight=feature_weight, ce_weight=ce_weight,
                       pad_slot=pad_slot, pad_step=pad_step, pad_gate=pad_gate, seed=seed, max_steps=max_steps,
                       threads=threads)
        _train_unrolled(data, target, cfg, out, size, index_dir, device)
        return
    if teacher is None:
        raise RecSpecError(f"--objective {objective}: needs --teacher (recspec distill teacher)")
    cfg = _checked(DistillConfig, objective=objective, alpha=alpha, K=K, beta=beta, epochs=epochs, batch_size=batch_size, lr=lr,
                   warmup_steps=warmup_steps, eval_every=eval_every, eval_users=eval_users,
                   eval_decode=_checked(DecodeConfig, K=eval_K, tree=TreeConfig(draft_beams=draft_beams, gamma=gamma)),
                   seed=seed, max_steps=max_steps, time_limit_s=time_limit_s, threads=threads)
    cat, tgt = _catalog_and_target(data, target, index_dir, device, threads)
    td = _open_teacher(teacher, tgt, cat)
    torch.manual_seed(seed)
    draft = Decoder(_checked(ModelConfig.preset, cat.vocab.size, size)).to(device)
    evals: list[dict] = []
    res = distill(draft, tgt, td, cat, cfg, out, on_log=_collect(evals))
    _print_evals(evals)
    print(json.dumps(_json_safe(dataclasses.asdict(res))))


def _train_unrolled(data: str, target: str, cfg, out: str, size: str, index_dir: Optional[str], device: str) -> None:
    """`distill train` for the objectives trained on the target's own outputs (training/unrolled.py)."""
    import dataclasses

    from recspec.config import ModelConfig
    from recspec.training.unrolled import new_drafter, train_unrolled

    cat, tgt = _catalog_and_target(data, target, index_dir, device, cfg.threads)
    _checked(ModelConfig.preset, cat.vocab.size, size)
    model = new_drafter(tgt, cat.vocab, cfg, size)
    res = train_unrolled(model, tgt, cat.data, cat.index, cat.vocab, cfg, out)
    print(json.dumps(dataclasses.asdict(res)))


def _json_safe(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}  # NaN -> null


def _numbers(text: str, flag: str, cast, what: str) -> tuple:
    """'1,3,2' -> (1, 3, 2) through `cast`; a bad or empty list is a one-line error naming the flag."""
    try:
        values = tuple(cast(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values:
        raise RecSpecError(f"{flag}: expected comma-separated {what}, got {text!r}")
    return values


def _ints(text: str, flag: str) -> tuple[int, ...]:
    return _numbers(text, flag, int, "integers")


def _floats(text: str, flag: str) -> tuple[float, ...]:
    return _numbers(text, flag, float, "numbers")


@distill_app.command("experiment")
def distill_experiment(data: str = DATA, target: str = TARGET, teacher: str = TEACHER,
                       out_dir: str = typer.Option(..., help="one run folder per objective (reused when finished)"),
                       results: Optional[str] = typer.Option(None, help="results json (default runs/distill/distill_<data>.json)"),
                       objectives: str = "ce,wordkd,tvd,seqkd,atspeed-s,atspeed-r",
                       size: str = typer.Option("draft", help="draft model preset"), epochs: int = 10, lr: float = 1e-3,
                       batch_size: int = typer.Option(64, help="teacher examples per step"), alpha: float = 0.7,
                       warmup_steps: int = 100, eval_every: int = 0,
                       time_limit_s: float = typer.Option(0.0, help="training time cap per draft (0: none)"),
                       max_steps: int = typer.Option(0, help="optimiser steps per draft (0: all epochs)"),
                       eval_users: int = 200, K: str = typer.Option("1,5,10,20", "--K", help="target beams, timed"),
                       users: int = typer.Option(200, help="test users timed per (mode, K)"),
                       batch: str = typer.Option("1", help="users per call, timed"), draft_beams: int = 40,
                       gamma: int = 3, warmup: int = 3, threads: int = 0, seed: int = 0, device: str = "cpu",
                       index_dir: Optional[str] = INDEX_DIR):
    """Train one draft per objective, then time AR and strict / relaxed spec decoding with each -> JSON + PNG."""
    import dataclasses

    from recspec.config import DistillConfig, ModelConfig, to_dict
    from recspec.evaluation.bench import BenchConfig
    from recspec.evaluation.report import plot_acceptance, write_results
    from recspec.training.distill_experiment import ExperimentConfig, run_experiment

    names = tuple(objectives.split(","))
    for name in names:
        _checked(DistillConfig, objective=name)
    dcfg = _checked(DistillConfig, alpha=alpha, epochs=epochs, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                    eval_every=eval_every, eval_users=eval_users, seed=seed,
                    eval_decode=DecodeConfig(tree=TreeConfig(draft_beams=draft_beams, gamma=gamma)),
                    time_limit_s=time_limit_s, max_steps=max_steps, threads=threads)
    bcfg = BenchConfig(Ks=_ints(K, "--K"), batches=_ints(batch, "--batch"), users=users, warmup=warmup,
                       modes=("ar", "spec-strict", "spec-relaxed"),
                       decode=DecodeConfig(seed=seed, tree=TreeConfig(draft_beams=draft_beams, gamma=gamma)))
    cfg = ExperimentConfig(objectives=names, size=size, distill=dcfg, bench=bcfg)
    cat, tgt = _catalog_and_target(data, target, index_dir, device, threads)
    _checked(ModelConfig.preset, cat.vocab.size, size)  # an unknown size fails now, not after the teacher checks
    td = _open_teacher(teacher, tgt, cat)
    rows, trained = run_experiment(tgt, td, cat, cfg, out_dir)
    path = write_results(rows, results or f"runs/distill/distill_{cat.data.name}.json", device,
                         extra={"experiment": to_dict(cfg),
                                "drafts": {n: _json_safe(dataclasses.asdict(r)) for n, r in trained.items()}})
    png = plot_acceptance(path)
    _print_rows(rows)
    print(f"results: {path}  plot: {png}")


@app.command("pad-ablation")
def pad_ablation(data: str = DATA, target: str = TARGET,
                 out_dir: str = typer.Option(..., help="one folder per trained drafter (reused when finished)"),
                 results: Optional[str] = typer.Option(None, help="results json (default <out-dir>/pad_ablation.json)"),
                 drafters: str = typer.Option("draft-model,feature-head", help="drafters to ablate"),
                 variants: str = typer.Option("base,slot,step,both-ungated,pad", help="PAD variants"),
                 steps: int = typer.Option(300, help="training steps of every drafter (seeded, the same for all)"),
                 unroll: int = typer.Option(3, help="unrolled draft steps in training (PAD's largest step index)"),
                 M: int = typer.Option(10, "--M", help="items per list"), users: int = typer.Option(200, help="test users"),
                 batch: int = typer.Option(1, help="users per decoding call"), draft_beams: int = 8, gamma: int = 4,
                 size: str = typer.Option("draft", help="the independent draft model's preset"),
                 batch_size: int = 32, lr: float = 1e-3, seed: int = 0, threads: int = 0, device: str = "cpu",
                 index_dir: Optional[str] = INDEX_DIR):
    """Which parts of PAD help which drafter: train every (drafter, variant) for the same seeded steps against
    the target, decode the same users' greedy lists with each -> one table (JSON + PNG of per-depth acceptance)."""
    import os

    from recspec.config import UnrollConfig, to_dict
    from recspec.evaluation.report import format_pad_ablation, plot_pad_ablation, write_results
    from recspec.training.pad_ablation import AblationConfig, run_ablation

    ucfg = _checked(UnrollConfig, steps=steps, unroll=unroll, batch_size=batch_size, lr=lr, seed=seed, threads=threads,
                    warmup_steps=min(100, max(steps // 10, 1)))
    cfg = _checked(AblationConfig, drafters=tuple(drafters.split(",")), variants=tuple(variants.split(",")), M=M,
                   users=users, batch=batch, train=ucfg, draft_size=size,
                   tree=_checked(TreeConfig, draft_beams=draft_beams, gamma=gamma))
    cat, tgt = _catalog_and_target(data, target, index_dir, device, threads)
    rows = run_ablation(tgt.eval(), cat, cfg, out_dir, on_row=lambda r: print(r, flush=True))
    path = write_results(rows, results or os.path.join(out_dir, "pad_ablation.json"), device,
                         extra={"ablation": to_dict(cfg), "target": target})
    png = plot_pad_ablation(path)
    print("\n".join(format_pad_ablation(rows)))
    print(f"results: {path}  plot: {png}")


# --- knowledge ---------------------------------------------------------------------------------------
def _pool_texts(path: str):
    """The generated texts of `--pool-from` (read only: a torn last line is skipped, the file left alone)."""
    from recspec.knowledge import read_done

    if not os.path.isfile(path):
        raise RecSpecError(f"--pool-from {path}: no such file")
    return read_done(path, repair=False)


@knowledge_app.command("train")
def knowledge_train(data: str = typer.Argument(..., help="folder with <name>.item.json"),
                    out: str = typer.Option(..., help="run folder: lm/ (training), model/ (the selected model), gate.json"),
                    size: str = typer.Option("demo", help="model size preset"),
                    steps: int = typer.Option(1200, callback=_positive), batch_size: int = typer.Option(32, callback=_positive),
                    lr: float = typer.Option(3e-3), dropout: float = typer.Option(0.1),
                    weight_decay: float = typer.Option(0.01), eval_every: int = typer.Option(100, callback=_positive),
                    device: str = typer.Option("cpu"), threads: int = typer.Option(0), seed: int = typer.Option(0)):
    """Train the knowledge text model on the old items (early stopping and temperature on a validation share of
    them), then its quality gate: perplexity on the new items' descriptions against interpolated KN n-grams."""
    from recspec.config import ModelConfig
    from recspec.evaluation.report import write_results
    from recspec.knowledge import train_text_model
    from recspec.training.text_lm import TextLMConfig

    cfg = _checked(TextLMConfig, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                   warmup_steps=max(steps // 50, 1), eval_every=eval_every, seed=seed, threads=threads)
    _checked(ModelConfig.preset, 8, size, dropout=dropout)  # a bad size or dropout fails before any work
    sized = lambda v, n: ModelConfig.preset(v, size, max_positions=n, dropout=dropout)  # noqa: E731
    folder, rows = train_text_model(data, out, sized, cfg, device=device, progress=True)
    for r in rows:
        print(f"KN order {r['ngram_order']}: n-gram ppl {r['ngram_ppl']:.2f}, LM ppl {r['lm_ppl']:.2f} "
              f"[{r['lo']:+.3f}, {r['hi']:+.3f}] nats/token: {'PASS' if r['passed'] else 'FAIL'}"
              f"{'  (the order validation chooses)' if r['chosen_order'] else ''}")
    print(f"model: {folder}  gate: {write_results(rows, os.path.join(out, 'gate.json'), device)}")


@knowledge_app.command("generate")
def knowledge_generate(data: str = typer.Argument(..., help="folder with <name>.item.json (and <name>.inter.json)"),
                       model: str = typer.Option(..., help="text LM checkpoint folder (recspec knowledge train)"),
                       out: str = typer.Option(..., help="JSON lines to write; a rerun resumes it"),
                       items: str = typer.Option("all", callback=_one_of("all", "old", "new"), help="all, old or new"),
                       mode: str = typer.Option("greedy", callback=_one_of("greedy", "relaxed"),
                                                help="greedy (exact) or relaxed (top-k/beta)"),
                       pool: str = typer.Option("category", callback=_one_of("none", "global", "category", "kmeans",
                                                                             "random"), help="retrieval pools"),
                       batch_size: int = typer.Option(16, callback=_positive),
                       accept_k: int = typer.Option(2, callback=_positive, help="relaxed: top-k"),
                       accept_beta: float = typer.Option(0.1, help="relaxed: probability above beta"),
                       width: int = typer.Option(4, callback=_positive, help="draft tree nodes per level"),
                       depth: int = typer.Option(8, callback=_positive, help="draft tree levels per round"),
                       budget: int = typer.Option(32, callback=_positive, help="draft nodes per context"),
                       pool_from: Optional[str] = typer.Option(None, help="JSON lines of generated texts (e.g. the old "
                                                               "items') that fill the pools; else the old items' "
                                                               "real descriptions"),
                       pool_fraction: float = typer.Option(1.0, help="share of the old texts warming the pools"),
                       online: bool = typer.Option(True, help="pools learn the generated texts batch by batch"),
                       max_output: int = typer.Option(128, callback=_positive, help="tokens per text"),
                       limit: Optional[int] = typer.Option(None, callback=_positive_or_none, help="first N items only"),
                       device: str = typer.Option("cpu"), seed: int = typer.Option(0)):
    """Generate item descriptions from title | brand | categories into JSON lines, with progress and resume."""
    from tqdm import tqdm

    from recspec.knowledge import KnowledgeConfig, generate_file, make_generator, open_knowledge, select_items
    from recspec.training.text_lm import load_text_lm

    cfg = _checked(KnowledgeConfig, mode=mode, pool=pool, accept_k=accept_k, accept_beta=accept_beta,
                   batch_size=batch_size, width=width, depth=depth, budget=budget, pool_fraction=pool_fraction,
                   online=online, max_output=max_output, seed=seed, cuda_graphs=device.startswith("cuda"))
    lm, tokenizer = load_text_lm(model, device=device)
    known, meta, interactions = open_knowledge(data, tokenizer, max_output=max_output)
    ids = select_items(known, items)[:limit]
    gen = make_generator(lm.eval(), tokenizer, known, cfg, meta, interactions,
                         generated=_pool_texts(pool_from) if pool_from else None)
    bar = tqdm(total=len(ids), unit="item", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total, bar.n = total, done
        bar.refresh()

    settings = {**cfg.settings(), "model": os.path.abspath(model), "pool_from": pool_from and os.path.abspath(pool_from)}
    written, before = generate_file(gen, ids, out, settings, progress)
    bar.close()
    print(f"{out}: {written} texts written, {before} already there ({len(ids)} items, pool {pool}, {mode})")



def _usage_errors() -> tuple[type, ...]:
    """The exception classes typer raises for bad flags (its vendored click, or click itself)."""
    import importlib

    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(module).ClickException)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _fail(message: str) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the message held
    raise SystemExit(2)


def main(argv: Optional[list[str]] = None) -> None:
    """The `recspec` entry point: a bad flag or bad input is one line on stderr and exit code 2."""
    try:
        code = app(args=argv, standalone_mode=False, prog_name="recspec")
    except RecSpecError as e:
        _fail(str(e))
    except _usage_errors() as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `recspec` alone: the help, as typer shows it
            print(e.format_message())
            raise SystemExit(0)
        _fail(e.format_message())
    else:
        if isinstance(code, int) and code:
            raise SystemExit(code)


if __name__ == "__main__":
    main()
