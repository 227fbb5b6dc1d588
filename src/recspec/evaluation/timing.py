"""Measurement, kept out of the math: device bandwidth, CUDA-graph replay times, an AR step against its
weight-read floor, the kernel profile of whole calls, and the time of each phase of one round.

Everything here drives the engine through its public API (`SpecEngine.run`, `.load`, `.round`, `.graph`,
`.state`) and the public round phases (`decoding.round`: frontier -> propose -> score -> verify -> commit);
nothing in decoding/ knows it is being timed. On the GPU, times are medians of CUDA-event timings of
graph replays; a figure that only a GPU gives is nan ({} for profiles) elsewhere.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from recspec.data.vocab import Prompts
from recspec.decoding.engine import SpecEngine
from recspec.decoding.handoff import Beams, Verdict
from recspec.decoding.round import RoundPlan, commit, frontier, propose, score, verify

PHASES = ("propose", "score", "verify", "commit")  # phase_ms's keys, in round order

Measure = Callable[[Callable[[], None]], float]  # runs a phase (at least once) and returns its figure


def on_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def engine_device(engine: SpecEngine) -> torch.device:
    return next(engine.target.parameters()).device


def sync(device) -> None:
    if on_cuda(device):
        torch.cuda.synchronize()  # host sync: timing boundary


# --- the device -----------------------------------------------------------------------------------
def copy_bandwidth(device) -> float:
    """Bytes/s of a 512 MiB device-to-device copy (read + write counted), median of 10; nan off the GPU."""
    if not on_cuda(device):
        return float("nan")
    x = torch.empty(512 * 2**20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    ts = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); y.copy_(x); b.record(); torch.cuda.synchronize()  # noqa: E702
        ts.append(a.elapsed_time(b) / 1e3)
    return 2 * x.numel() / statistics.median(ts)


def step_floor_ms(num_params: int, bytes_per_param: float, bandwidth: float) -> float:
    """The weight-read floor of one decoding step: every weight read once at `bandwidth` bytes/s, in ms."""
    return num_params * bytes_per_param / bandwidth * 1e3


# --- graphs ---------------------------------------------------------------------------------------
def graph_ms(graph: torch.cuda.CUDAGraph, reps: int = 50, skip: int = 5) -> float:
    """Median ms of `reps` replays timed with CUDA events, the first `skip` left out (warm-up)."""
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); graph.replay(); b.record(); torch.cuda.synchronize()  # noqa: E702
        ts.append(a.elapsed_time(b))
    return statistics.median(ts[skip:])


def replay_ms(fn: Callable[[], None], reps: int = 50) -> float:
    """Capture fn as a CUDA graph (after a warm-up on a side stream), replay it: median ms. What fn
    stores for later (its outputs) are the graph's tensors afterwards, refreshed by every replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return graph_ms(g, reps)


def wall_ms(fn: Callable[[], None], reps: int = 5) -> float:
    """Median wall-clock ms of `reps` synchronous calls (the CPU's phase timer)."""
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def kernel_count(fn: Callable[[], None]) -> float:
    """Device kernels one eager call of fn launches (0 off the GPU)."""
    if not torch.cuda.is_available():
        fn()
        return 0
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in p.events() if str(e.device_type).endswith("CUDA"))


# --- whole calls and steps ------------------------------------------------------------------------
def call_ms(engine: SpecEngine, prompts: Prompts, reps: int = 30, warmup: int = 3) -> float:
    """Median wall ms of one whole `engine.run` (host syncs, set-up and the result's read-back included)."""
    for _ in range(warmup):
        engine.run(prompts)
    ts = []
    for _ in range(reps):
        sync(prompts.tokens.device)
        t0 = time.perf_counter()
        res, _ = engine.run(prompts)
        res.sids.tolist()  # host sync: the lists reach the caller
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def ar_step_ms(engine: SpecEngine, prompts: Prompts, reps: int = 50, skip: int = 10) -> float:
    """Median ms of one graph-replayed autoregressive round after the first (K tokens through the target)
    on `prompts`, after one `engine.run` on them; nan off the GPU."""
    if not on_cuda(engine_device(engine)):
        return float("nan")
    engine.run(prompts)
    return graph_ms(engine.graph(RoundPlan(first=False, d=0)), reps=reps, skip=skip)


def kernel_profile(engine: SpecEngine, prompts: Prompts, calls: int = 5) -> dict:
    """Where a whole call's device time goes: kernel ms per call by kind (GEMM / attention / other), the
    top kernels and launches per call, over `calls` calls of `engine.run` after 3 warm-up calls. {} off
    the GPU; {"error": ...} if the profiler fails (a diagnosis, not a result: never lose a run to it)."""
    if not on_cuda(engine_device(engine)):
        return {}
    try:
        from torch.profiler import ProfilerActivity, profile

        for _ in range(3):
            engine.run(prompts)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                engine.run(prompts)
            torch.cuda.synchronize()
        return _kernel_table(prof.key_averages(), calls)
    except Exception as exc:  # noqa: BLE001
        return {"error": repr(exc)}


def _kernel_table(events, calls: int) -> dict:
    kinds: dict[str, float] = {}
    top = []
    for e in events:
        us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if not us:
            continue
        name = e.key.lower()
        kind = "gemm" if any(w in name for w in ("gemm", "nvjet", "cutlass", "sm90_x", "gemv", "splitk")) else \
            "attention" if any(w in name for w in ("attention", "flash", "fmha", "sdpa")) else "other"
        kinds[kind] = kinds.get(kind, 0.0) + us / calls / 1e3
        top.append((us / calls / 1e3, e.key[:80], e.count // calls))
    top.sort(reverse=True)
    return {"ms_per_call_by_kind": {k: round(v, 4) for k, v in kinds.items()},
            "top_kernels": [{"ms": round(a, 4), "name": b, "launches": c} for a, b, c in top[:12]],
            "kernels_per_call": sum(c for _, _, c in top)}


# --- the phases of one round ----------------------------------------------------------------------
def phase_ms(engine: SpecEngine, prompts: Prompts, plan: RoundPlan, reps: int = 50,
             start: RoundPlan | None = None) -> dict[str, float]:
    """Median ms of each phase of the round `plan` on `prompts` -> {"propose", "score", "verify", "commit"}.

    On the GPU each phase is captured as its own CUDA graph and replayed (fixed shapes, as under graphs);
    elsewhere each runs `reps` times synchronously (the engine's own shapes). A phase repeated writes the
    same values, so the engine ends where `engine.round(plan)` leaves it (`measure_phases`)."""
    measure = (lambda fn: replay_ms(fn, reps)) if on_cuda(engine_device(engine)) else (lambda fn: wall_ms(fn, reps))
    return measure_phases(engine, prompts, plan, measure, start)


def measure_phases(engine: SpecEngine, prompts: Prompts, plan: RoundPlan, measure: Measure,
                   start: RoundPlan | None = None) -> dict[str, float]:
    """`measure` each phase of the round `plan`, run phase by phase from where it starts: the prompts
    loaded, and for a plan after the first, the engine's first round (`start`, default `engine.plan(0,
    True)`) run. Afterwards the engine's beams are the round's, as `engine.round(plan)` would leave them.
    measure(fn) runs fn at least once (e.g. `kernel_count`, `wall_ms`, `replay_ms`)."""
    engine.load(prompts)
    if plan.first:
        engine.reset()
    else:
        engine.round(start or engine.plan(0, True))
    beams, _, figures = round_by_phases(engine, plan, measure)
    engine.beams.copy_(beams)
    return figures


def round_by_phases(engine: SpecEngine, plan: RoundPlan, measure: Measure) -> tuple[Beams, Verdict, dict[str, float]]:
    """One round from the engine's current state, as `round.spec_round` runs it, one public phase at a
    time, each through `measure` -> (the new beams, the verdict, {phase: figure}). The engine's beams are
    not updated (the caller copies them in). Shapes are fixed on the GPU (phases captured as graphs).
    Without a drafter, propose has nothing to run: its figure is 0. Repeats of a relaxed round's phases
    draw again (the beams then follow the last draws)."""
    s = engine.state()
    eager = not engine.cfg.engine.static and not on_cuda(engine_device(engine))
    f = frontier(engine.beams, s.lay, not plan.first, s.banned)
    box: dict = {}
    steps = {
        "propose": lambda: box.update(tree=propose(s, f, plan)),
        "score": lambda: box.update(scores=score(s, f, box["tree"], trim=eager)),
        "verify": lambda: box.update(out=verify(s, engine.beams, box["scores"], box["tree"], early_exit=eager)),
        "commit": lambda: commit(s, f, box["scores"], box["out"][1]),
    }
    figures = {}
    for name in PHASES:
        if name == "propose" and engine.drafter is None:  # nothing to run (an empty graph cannot be timed)
            steps[name]()
            figures[name] = 0.0
        else:
            figures[name] = measure(steps[name])
    return box["out"][0], box["out"][1], figures
