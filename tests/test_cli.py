"""The `recspec distill` commands end to end on a tiny sequential data set written to disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from recspec import cli
from recspec.config import OBJECTIVE_NAMES
from recspec.data.sids import SIDIndex
from recspec.data.vocab import Vocab
from recspec.errors import DataError
from recspec.models.hf import CheckpointMeta, save_checkpoint

NUM_ITEMS = 30
KS = (1, 2)


# the quality gate of `bench` on a random toy target: a tiny SASRec, and timing allowed below the gate
GATE_SMOKE = ["--allow-ungated", "--sasrec-steps", "4", "--sasrec-hidden", "8", "--sasrec-dropout", "0.1",
              "--sasrec-lr", "1e-3"]

def write_dataset(folder: Path, codes: np.ndarray) -> SIDIndex:
    """sequential_{train,valid,test}.txt for 16 users (1-based item ids) and the index (SIDs `codes`)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = {"train": [], "valid": [], "test": []}
    for u in range(1, 17):
        for split, n in (("train", int(rng.integers(2, 6))), ("valid", 1), ("test", 1)):
            lines[split].append(" ".join([str(u)] + [str(int(i) + 1) for i in rng.integers(0, NUM_ITEMS, n)]))
    for split, rows in lines.items():
        (folder / f"sequential_{split}.txt").write_text("\n".join(rows) + "\n")
    index = SIDIndex(codes=codes, level_sizes=(5, 6), prefixes=("a", "b"))
    index.save(folder / "toy.index.json")
    return index


@pytest.fixture(scope="module")
def toy(tmp_path_factory, make_decoder):
    """A data folder, a tiny random target checkpoint for it, and its teacher data via the CLI."""
    root = tmp_path_factory.mktemp("cli")
    codes = np.stack([np.arange(NUM_ITEMS) // 6, np.arange(NUM_ITEMS) % 6], axis=1)
    index = write_dataset(root / "data", codes)
    vocab = Vocab.for_index(index)
    save_checkpoint(make_decoder(vocab, seed=3), CheckpointMeta(vocab, index.fingerprint()), root / "target")
    threads = torch.get_num_threads()
    res = invoke("teacher", root / "data", "--target", root / "target", "--out", root / "teacher",
                 "--K-prime", 4, "--batch-size", 16)
    torch.set_num_threads(threads)
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["num_examples"] > 0 and info["shards_written"] == info["num_shards"]
    return root


def invoke(command: str, *args):
    res = CliRunner().invoke(cli.app, ["distill", command, *map(str, args), "--threads", "1"])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    assert res.exit_code == 0, res.output
    return res


def test_experiment_writes_one_row_per_drafter_mode_and_k(toy):
    out = toy / "bench.json"
    args = [toy / "data", "--target", toy / "target", "--teacher", toy / "teacher", "--out-dir", toy / "runs",
            "--results", out, "--size", "tiny", "--epochs", 1, "--batch-size", 16, "--eval-users", 4,
            "--K", ",".join(map(str, KS)), "--users", 4, "--draft-beams", 4, "--gamma", 2, "--warmup", 1]
    invoke("experiment", *args)
    doc = json.loads(out.read_text())
    assert {"device", "command", "date", "rows"} <= set(doc)
    rows = doc["rows"]
    ar = {r["K"]: r for r in rows if r["mode"] == "ar"}
    spec = {(r["drafter"], r["mode"], r["K"]): r for r in rows if r["mode"] != "ar"}
    assert sorted(ar) == list(KS) and len(rows) == len(KS) * (1 + 2 * len(OBJECTIVE_NAMES))
    assert set(spec) == {(o, m, k) for o in OBJECTIVE_NAMES for m in ("spec-strict", "spec-relaxed") for k in KS}
    for (o, m, k), r in spec.items():
        assert r["task"] == "topk" and r["batch"] == 1 and r["users"] == 4
        for key in ("median_ms", "accepted_levels", "target_calls", "speedup_vs_ar", f"recall@{k}", f"ndcg@{k}"):
            assert np.isfinite(r[key]), (o, m, k, key)
        assert r["speedup_vs_ar"] == pytest.approx(ar[k]["median_ms"] / r["median_ms"], rel=1e-2)
        if m == "spec-strict":
            assert r["mismatches"] == 0  # strict is lossless whatever the draft
            assert r[f"recall@{k}"] == ar[k][f"recall@{k}"]
    assert set(doc["drafts"]) == set(OBJECTIVE_NAMES)
    assert all((toy / "runs" / o / "train_state.json").is_file() for o in OBJECTIVE_NAMES)
    assert out.with_suffix(".png").stat().st_size > 0
    weights = [toy / "runs" / o / "last" / "model.safetensors" for o in OBJECTIVE_NAMES]
    stamps = [w.stat().st_mtime_ns for w in weights]
    invoke("experiment", *args)  # a rerun reuses the finished drafts: no step, no checkpoint written
    again = json.loads(out.read_text())["drafts"]
    assert all(again[o]["steps"] == doc["drafts"][o]["steps"] for o in OBJECTIVE_NAMES)
    assert [w.stat().st_mtime_ns for w in weights] == stamps


def test_train_refuses_teacher_data_of_another_index(toy, tmp_path, make_decoder):
    codes = np.stack([np.arange(NUM_ITEMS) // 6, np.arange(NUM_ITEMS) % 6], axis=1)[::-1].copy()
    index = write_dataset(tmp_path / "data", codes)  # same users and vocabulary, other SIDs
    vocab = Vocab.for_index(index)
    save_checkpoint(make_decoder(vocab, seed=3), CheckpointMeta(vocab, index.fingerprint()), tmp_path / "target")
    with pytest.raises(DataError, match="another SID vocabulary / index"):
        invoke("train", tmp_path / "data", "--target", tmp_path / "target", "--teacher", toy / "teacher",
               "--objective", "atspeed-s", "--out", tmp_path / "run")


def test_errors_are_one_line(toy, tmp_path, monkeypatch, capsys):
    argv = ["recspec", "distill", "train", str(toy / "data"), "--target", str(toy / "target"),
            "--teacher", str(toy / "teacher"), "--out", str(tmp_path / "run"), "--objective"]
    for objective, message in (("kd", "unknown objective 'kd'"), ("ce", None)):
        monkeypatch.setattr("sys.argv", argv + [objective, "--size", "huge"])
        with pytest.raises(SystemExit) as e:
            cli.main()
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
        assert message is None or message in err
        assert message is not None or "unknown model size 'huge'" in err


def test_bench_times_named_drafts_against_one_ar_run(toy, make_decoder):
    vocab = Vocab.for_index(SIDIndex.load(toy / "data" / "toy.index.json"))
    fp = SIDIndex.load(toy / "data" / "toy.index.json").fingerprint()
    for seed in (1, 2):
        save_checkpoint(make_decoder(vocab, seed=seed, hidden_size=16), CheckpointMeta(vocab, fp), toy / f"d{seed}" / "best")
    out = toy / "bench_named.json"
    res = CliRunner().invoke(cli.app, ["bench", str(toy / "data"), "--target", str(toy / "target"), *GATE_SMOKE,
                                       "--draft", f"first={toy / 'd1' / 'best'}", "--draft", str(toy / "d2" / "best"),
                                       "--K", "2", "--batch", "1", "--users", "4", "--warmup", "1", "--draft-beams", "4",
                                       "--gamma", "2", "--modes", "ar,spec-strict", "--out", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["rows"]
    assert [(r["mode"], r.get("drafter")) for r in rows] == [("ar", None), ("spec-strict", "first"), ("spec-strict", "d2")]
    assert all(r["mismatches"] == 0 for r in rows[1:])
    assert all(r["eos"] is False and r["exclude_history"] is False for r in rows)  # the defaults, said in every row
    twice = CliRunner().invoke(cli.app, ["bench", str(toy / "data"), "--target", str(toy / "target"), *GATE_SMOKE, "--draft",
                                         f"x={toy / 'd1' / 'best'}", "--draft", f"x={toy / 'd2' / 'best'}", "--out", str(out)])
    assert twice.exit_code != 0 and "given twice" in twice.output


def test_recommend_with_a_depth_schedule_equals_plain_beam_search(toy, make_decoder):
    """--depths / --expand reach the engine, and strict speculative decoding still returns AR's lists."""
    vocab = Vocab.for_index(SIDIndex.load(toy / "data" / "toy.index.json"))
    fp = SIDIndex.load(toy / "data" / "toy.index.json").fingerprint()
    save_checkpoint(make_decoder(vocab, seed=7, hidden_size=16), CheckpointMeta(vocab, fp), toy / "d7")
    histories = "".join(json.dumps({"history": h}) + "\n" for h in ([1, 2, 3], [4], [5, 9, 12, 20]))
    base = ["recommend", str(toy / "data"), "--model", str(toy / "target"), "--K", "3"]
    plain = CliRunner().invoke(cli.app, base, input=histories)
    spec = CliRunner().invoke(cli.app, base + ["--draft", str(toy / "d7"), "--draft-beams", "4", "--depths", "0,2",
                                               "--expand", "0"], input=histories)
    capped = CliRunner().invoke(cli.app, base + ["--draft", str(toy / "d7"), "--draft-beams", "4", "--widths", "3,3",
                                                 "--expand", "0"], input=histories)
    assert plain.exit_code == 0 and spec.exit_code == 0 and capped.exit_code == 0, plain.output + spec.output + capped.output
    lists = lambda out: [[r["item"] for r in json.loads(line)["recommendations"]] for line in out.splitlines()]  # noqa: E731
    assert lists(spec.output) == lists(plain.output) == lists(capped.output) and len(lists(plain.output)) == 3
    bad = CliRunner().invoke(cli.app, base + ["--draft", str(toy / "d7"), "--depths", "1,x"], input=histories)
    assert bad.exit_code != 0 and "'x' is not a depth" in str(bad.exception)
    bad = CliRunner().invoke(cli.app, base + ["--draft", str(toy / "d7"), "--widths", "4,-1"], input=histories)
    assert bad.exit_code != 0 and "'-1' is not a width" in str(bad.exception)


def test_recommend_with_the_trie_drafter_equals_plain_beam_search(toy):
    """--draft trie (no checkpoint: the trie's children, ranked by popularity where a level is cut) with
    strict verification returns AR's lists: with levels cut below the trie's fan-out and with whole ones."""
    index = SIDIndex.load(toy / "data" / "toy.index.json")
    L = index.num_levels
    prefixes = [len({tuple(c[:d]) for c in index.codes.tolist()}) for d in range(1, L + 1)]  # per SID level
    histories = "".join(json.dumps({"history": h}) + "\n" for h in ([1, 2, 3], [4], [5, 9, 12, 20], [30, 1]))
    base = ["recommend", str(toy / "data"), "--model", str(toy / "target"), "--K", "3"]
    trie = base + ["--draft", "trie", "--verify", "strict", "--gamma", str(L)]
    runs = [CliRunner().invoke(cli.app, args, input=histories)
            for args in (base, trie + ["--draft-beams", str(prefixes[0] - 1)], trie + ["--draft-beams", str(max(prefixes))])]
    assert all(r.exit_code == 0 for r in runs), "".join(r.output for r in runs)
    recs = lambda out: [json.loads(line)["recommendations"] for line in out.splitlines()]  # noqa: E731
    plain, cut, whole = (recs(r.output) for r in runs)
    assert len(plain) == 4 and all(len(r) == 3 for r in plain) and 3 <= prefixes[0] - 1  # the cut run: N >= K
    for got in (cut, whole):
        assert [[r["item"] for r in u] for u in got] == [[r["item"] for r in u] for u in plain]
        assert [r["score"] for u in got for r in u] == pytest.approx([r["score"] for u in plain for r in u], abs=1e-4)
    # the trie drafter is really used: `eval` with a tree holding every prefix of every level takes one target
    # call per user (every drafted level accepted, the last level the target's own), AR one per level (and
    # one for <eos> with --eos); same metrics
    ev = ["eval", str(toy / "data"), "--model", str(toy / "target"), "--K", "3", "--users", "6", "--no-popularity"]
    trie_ev = ["--draft", "trie", "--gamma", str(L), "--draft-beams", str(max(prefixes))]
    runs = [CliRunner().invoke(cli.app, args) for args in (ev, ev + trie_ev, ev + ["--eos"], ev + trie_ev + ["--eos"])]
    assert all(r.exit_code == 0 for r in runs), "".join(r.output for r in runs)
    ar, spec, ar_eos, spec_eos = (json.loads(r.output)["recspec"] for r in runs)
    assert ar["target_calls"] == L and ar_eos["target_calls"] == L + 1 and spec["target_calls"] == spec_eos["target_calls"] == 1
    metrics = lambda m: {k: v for k, v in m.items() if "@" in k}  # noqa: E731
    assert len(metrics(ar)) >= 2 and metrics(spec) == metrics(ar) and metrics(spec_eos) == metrics(ar_eos)


def _bad_input_cases(toy) -> list[tuple[list[str], str, str]]:
    """(argv, stdin, words the one-line error must hold) for every bad input the CLI must refuse."""
    data, target = str(toy / "data"), str(toy / "target")
    ev = ["eval", data, "--model", target, "--users", "2"]
    rec = ["recommend", data, "--model", target]
    bench = ["bench", data, "--target", target, "--users", "2", "--batch", "1", *GATE_SMOKE]
    hist = '{"history": [1, 2]}\n'
    return [
        (ev + ["--K", "0"], "", "'--K': must be >= 1, got 0"),
        (ev + ["--K", "-1"], "", "'--K': must be >= 1, got -1"),
        (ev + ["--K", str(NUM_ITEMS + 1)], "", f"--K {NUM_ITEMS + 1}: above the {NUM_ITEMS} distinct items"),
        (rec + ["--K", "0"], hist, "'--K': must be >= 1, got 0"),
        (rec + ["--K", str(NUM_ITEMS + 1)], hist, f"--K {NUM_ITEMS + 1}: above the {NUM_ITEMS} distinct items"),
        (bench + ["--K", "0", "--modes", "ar"], "", "'--K': must be >= 1, got 0"),
        (bench + ["--K", str(NUM_ITEMS + 1), "--modes", "ar"], "", f"--K {NUM_ITEMS + 1}: above"),
        (rec + ["--verify", "bogus", "--draft", "trie"], hist, "'--verify': 'bogus' is not one of strict, relaxed"),
        (ev + ["--verify", "bogus"], "", "'--verify': 'bogus' is not one of strict, relaxed"),
        (rec + ["--draft", "trie", "--widths", "0,1"], hist, "--widths 0,1: 0 is below 1"),
        (bench + ["--K", "2", "--modes", "ar,bogus"], "", "--modes 'ar,bogus': 'bogus' is not one of"),
        (bench + ["--K", "2", "--modes", "ar,spec-strict"], "", "spec-strict needs --draft"),
        (ev + ["--split", "bogus"], "", "'--split': 'bogus' is not one of test, valid"),
        (rec + ["--verify", "relaxed"], hist, "--verify relaxed: needs --draft"),
        (ev + ["--verify", "relaxed"], "", "--verify relaxed: needs --draft"),
        (rec + ["--verify", "topk-beta", "--draft", "trie"], hist, "--verify topk-beta: a greedy rule"),
        (rec, '{"history": [1, 10.7]}\n', "-:1: history[1] = 10.7 is not an item id"),
        (rec, '{"history": [1, true]}\n', "-:1: history[1] = true is not an item id"),
    ]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(toy, tmp_path, monkeypatch, capsys):
    import io

    monkeypatch.chdir(tmp_path)  # bench's default --out is under runs/ here
    before = sorted(p.relative_to(toy) for p in toy.rglob("*"))
    for argv, stdin, words in _bad_input_cases(toy):
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        with pytest.raises(SystemExit) as e:
            cli.main(argv + ["--threads", "1"] if argv[0] == "bench" else argv)
        out = capsys.readouterr()
        err = out.err.strip()
        assert e.value.code == 2, (argv, err)
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and words in err, (argv, err)
        assert out.out == "", (argv, out.out)
        assert list(tmp_path.iterdir()) == [], (argv, list(tmp_path.iterdir()))
    assert sorted(p.relative_to(toy) for p in toy.rglob("*")) == before  # nothing written beside the data either


def test_bench_writes_under_runs_and_its_table_fits_80_columns(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli.app, ["bench", str(toy / "data"), "--target", str(toy / "target"), *GATE_SMOKE, "--draft", "trie",
                                       "--K", "2", "--K", "3", "--batch", "1", "--users", "3", "--warmup", "1",
                                       "--draft-beams", "4", "--modes", "ar,spec-strict,spec-relaxed", "--threads", "1"],
                             env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["runs/bench/topk.json", "runs/bench/topk.png"]
    rows = json.loads((tmp_path / "runs/bench/topk.json").read_text())["rows"]
    table = res.stdout.splitlines()
    assert len(rows) == 6 and max(len(line) for line in table) <= 80
    header = table[0].split()
    assert header[:4] == ["drafter", "mode", "K", "b"] and "R@K" in header
    for r, line in zip(rows, table[1:]):  # one line per row, in order, holding its numbers
        assert f"{r['median_ms']:.2f}" in line and f"{r['recall@' + str(r['K'])]:.4f}" in line


# --- tree shapes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,message", [
    (["--draft-beams", "4", "--widths", "9"], "error: --widths 9: 9 is above --draft-beams 4"),
    (["--widths", "3,0"], "error: --widths 3,0: 0 is below 1"),
    (["--draft-beams", "2"], "error: --draft-beams 2 is below --K 3"),
    (["--gamma", "2", "--tree-budget", "64"], "error: --tree-budget 64 sizes the auto shape"),
])
def test_a_tree_that_cannot_be_honoured_is_a_one_line_error(toy, monkeypatch, capsys, flags, message):
    monkeypatch.setattr("sys.argv", ["recspec", "recommend", str(toy / "data"), "--model", str(toy / "target"),
                                     "--K", "3", "--draft", "trie", *flags])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith(message)


def test_eval_and_bench_default_to_the_auto_tree(toy):
    """No shape flag: the catalogue's auto shape for the device. With a budget holding every prefix of the
    toy trie, one tree from the root is accepted whatever the target: one call per user, AR's metrics.
    Bench rows name the tree they ran."""
    from recspec.config import CPU_TREE_BUDGET
    from recspec.data.catalog import open_catalog
    from recspec.decoding.tree_shape import auto_shape

    cat = open_catalog(str(toy / "data"))
    K, L = 3, cat.trie.num_levels
    prefixes = int((cat.trie.depth >= 1).sum() - (cat.trie.depth > L).sum())  # states at SID levels 1..L
    assert auto_shape(cat.trie, K, prefixes).depths[0] == L - 1  # every level in the first round (the last: the target's)
    ev = ["eval", str(toy / "data"), "--model", str(toy / "target"), "--K", str(K), "--users", "6", "--no-popularity"]
    runs = [CliRunner().invoke(cli.app, args) for args in (ev, ev + ["--draft", "trie", "--tree-budget", str(prefixes)])]
    assert all(r.exit_code == 0 for r in runs), "".join(r.output for r in runs)
    ar, spec = (json.loads(r.output)["recspec"] for r in runs)
    assert ar["target_calls"] == L and spec["target_calls"] == 1
    assert {k: v for k, v in spec.items() if "@" in k} == {k: v for k, v in ar.items() if "@" in k}
    out = toy / "bench_auto.json"
    res = CliRunner().invoke(cli.app, ["bench", str(toy / "data"), "--target", str(toy / "target"), *GATE_SMOKE, "--draft", "trie",
                                       "--K", str(K), "--batch", "1", "--users", "4", "--warmup", "1",
                                       "--modes", "ar,spec-strict", "--out", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    shape = auto_shape(cat.trie, K, CPU_TREE_BUDGET)  # the default where the target runs on the CPU
    spec_row = next(r for r in json.loads(out.read_text())["rows"] if r["mode"] == "spec-strict")
    assert spec_row["widths"] == "/".join(map(str, shape.widths)) and spec_row["draft_beams"] == shape.N
    assert spec_row["mismatches"] == 0


def test_bench_rows_say_eos_and_exclusions(toy):
    """--eos --exclude-history reach every mode (hf included): every row says so, AR takes L + 1 calls,
    strict speculation and HF return AR's lists."""
    pytest.importorskip("transformers")
    L = SIDIndex.load(toy / "data" / "toy.index.json").num_levels
    out = toy / "bench_eos.json"
    res = CliRunner().invoke(cli.app, ["bench", str(toy / "data"), "--target", str(toy / "target"), *GATE_SMOKE, "--draft", "trie",
                                       "--K", "3", "--batch", "2", "--users", "4", "--warmup", "1", "--draft-beams", "8",
                                       "--gamma", "2", "--modes", "ar,spec-strict,hf", "--eos", "--exclude-history",
                                       "--out", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"ar", "spec-strict", "hf"}
    assert all(r["eos"] is True and r["exclude_history"] is True for r in rows.values())
    assert rows["ar"]["target_calls"] == L + 1
    assert rows["spec-strict"]["mismatches"] == 0 and rows["hf"]["mismatches"] == 0


def test_recommend_excluding_history_returns_no_history_item(toy):
    """--exclude-history: no list holds an item of its history, AR and strict speculation agree; a history
    that leaves exactly K items gets exactly those. Without the flag the long histories' lists hold some.
    Ids in and out are the data files' (1-based here)."""
    num_items = SIDIndex.load(toy / "data" / "toy.index.json").num_items
    K = 5
    internal = [list(range(0, num_items, 2)) + [1, 3, 5], [4], list(range(num_items - K))]
    histories = [[i + 1 for i in h] for h in internal]  # as the sequential files write them
    lines = "".join(json.dumps({"history": h}) + "\n" for h in histories)
    base = ["recommend", str(toy / "data"), "--model", str(toy / "target"), "--K", str(K)]
    spec = ["--draft", "trie", "--gamma", "2", "--draft-beams", "8"]
    runs = [CliRunner().invoke(cli.app, args, input=lines)
            for args in (base, base + ["--exclude-history"], base + ["--exclude-history"] + spec)]
    assert all(r.exit_code == 0 for r in runs), "".join(r.output for r in runs)
    plain, excluded, spec_excluded = ([[r["item"] for r in json.loads(line)["recommendations"]]
                                       for line in r.output.splitlines()] for r in runs)
    assert any(set(recs) & set(h) for h, recs in zip(histories, plain))
    for h, recs in zip(histories, excluded):
        assert len(recs) == K and not set(recs) & set(h), h
    assert sorted(excluded[2]) == list(range(num_items - K + 1, num_items + 1))
    assert spec_excluded == excluded


def test_bench_refuses_a_target_below_the_quality_gate(toy, tmp_path, monkeypatch, capsys):
    """A random target is below item transitions on the toy's test users: not timed, exit 2, nothing written;
    the last line says why, after the quality table."""
    monkeypatch.chdir(tmp_path)
    argv = ["bench", str(toy / "data"), "--target", str(toy / "target"), "--draft", "trie", "--K", "2", "--batch", "1",
            "--users", "2", "--modes", "ar", "--threads", "1", *GATE_SMOKE[1:]]
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("error: ") and "quality gate" in err[-1]
    assert any(line.startswith("transition") for line in err) and "gate: FAIL" in "\n".join(err)
    assert list(tmp_path.iterdir()) == []


def test_train_feature_head_and_pad_draft_without_teacher_data(toy, tmp_path, capsys, monkeypatch):
    """--objective feature-head / draft-unrolled train on the target's own outputs for exactly --steps steps and
    write a loadable drafter in last/ (a PAD head; a PAD draft checkpoint); a teacher objective without
    --teacher is a one-line error."""
    from recspec.models.heads import load_head
    from recspec.models.hf import load_checkpoint

    common = [toy / "data", "--target", toy / "target", "--steps", 3, "--batch-size", 4, "--unroll", 2,
              "--pad-slot", "--pad-step", "--size", "tiny"]
    res = invoke("train", *common, "--objective", "feature-head", "--out", tmp_path / "head")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["steps"] == 3 and out["stop_reason"] == "done" and out["checkpoint"] == str(tmp_path / "head" / "last")
    head, meta = load_head(out["checkpoint"])
    assert meta.role == "feature-head" and head.pad is not None and head.pad.cfg.k_max == 2
    res = invoke("train", *common, "--no-pad-gate", "--objective", "draft-unrolled", "--out", tmp_path / "draft")
    draft, _ = load_checkpoint(json.loads(res.stdout.strip().splitlines()[-1])["checkpoint"])
    assert draft.pad is not None and not draft.pad.cfg.gate and draft.cfg.hidden_size == 32
    monkeypatch.setattr("sys.argv", ["recspec", "distill", "train", str(toy / "data"), "--target", str(toy / "target"),
                                     "--objective", "ce", "--out", str(tmp_path / "ce")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "needs --teacher" in err and len(err.splitlines()) == 1


def test_pad_ablation_writes_one_row_per_drafter_and_variant(toy, tmp_path, monkeypatch, capsys):
    """pad-ablation: the greedy row and one spec row per (drafter, variant), each drafter trained exactly
    --steps steps; every list equals greedy's (mismatches 0), tau and per-depth acceptance are present; the
    JSON and its PNG are written; an unknown variant is a one-line error (exit 2)."""
    res = CliRunner().invoke(cli.app, ["pad-ablation", str(toy / "data"), "--target", str(toy / "target"),
                                       "--out-dir", str(tmp_path / "abl"), "--variants", "base,pad", "--steps", "3",
                                       "--users", "6", "--M", "3", "--batch", "2", "--draft-beams", "3", "--gamma", "2",
                                       "--size", "tiny", "--batch-size", "4", "--unroll", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "abl" / "pad_ablation.json").read_text())
    rows = doc["rows"]
    assert [r.get("drafter", r["mode"]) for r in rows] == ["greedy", "draft-model", "draft-model+pad", "feature-head",
                                                          "feature-head+pad"]
    spec = rows[1:]
    assert all(r["mismatches"] == 0 and r["train_steps"] == 3 and r["tau"] >= 1.0 for r in spec)
    assert all({"accept_d0", "accept_d1", "accept_slot_level1", "accept_slot_separator", "recall@3_ci"} <= set(r) for r in spec)
    assert (tmp_path / "abl" / "pad_ablation.png").is_file()
    monkeypatch.setattr("sys.argv", ["recspec", "pad-ablation", str(toy / "data"), "--target", str(toy / "target"),
                                     "--out-dir", str(tmp_path / "bad"), "--variants", "base,gates"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "unknown drafter or variant 'gates'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()
