"""Frozen configuration dataclasses. The CLI maps flags 1:1 onto these fields; files only serialise them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class PADConfig:
    """Position-aware drafting (models/pad.py, spec listwise-and-pad.md section 3): slot and step embeddings
    added to a drafter's input, starting as the identity. The slot of the token being predicted follows from
    the token fed: after a level-l code comes level l + 1 (L: <eos>), after <eos> or <bos> level 0, after
    anything else L + 1."""

    level_sizes: tuple[int, ...]  # the SID codebooks (the catalogue's `Vocab.level_sizes`): L = len
    k_max: int = 3  # step indices 0..k_max (0: the pass over accepted tokens; deeper draft steps share k_max)
    slot: bool = True  # h <- h + alpha * E_item[slot] (alpha learnable, starts at 0)
    step: bool = True  # h <- h + g * E_step[step] (E_step starts at 0)
    gate: bool = True  # g = sigmoid(W_g [h ; E_step[step]] + b_g), W_g = 0, b_g = -2 at init; False: g = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "level_sizes", tuple(int(s) for s in self.level_sizes))  # json lists
        if not self.level_sizes or min(self.level_sizes) < 1 or self.k_max < 0:
            raise ValueError(f"PAD needs level sizes >= 1 and k_max >= 0, got {self.level_sizes}, {self.k_max}")

    @property
    def num_slots(self) -> int:
        """L SID levels, <eos>, anything else."""
        return len(self.level_sizes) + 2


@dataclass(frozen=True)
class ModelConfig:
    """A LLaMA-architecture decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention)."""

    vocab_size: int  # special tokens + every SID level's codebook
    hidden_size: int = 256  # model width C
    num_layers: int = 4  # decoder blocks
    num_heads: int = 4  # query heads H
    num_kv_heads: int = 2  # key/value heads (H must be a multiple); < H is grouped-query attention
    intermediate_size: int = 688  # SwiGLU inner width
    max_positions: int = 512  # longest prompt + generated tokens the model is meant for
    rope_theta: float = 10000.0  # RoPE base
    rms_eps: float = 1e-6  # RMSNorm epsilon
    tie_embeddings: bool = False  # share input embedding and LM head
    dropout: float = 0.0  # training only: on the embeddings and on each attention / MLP output (0: none)
    pad: PADConfig | None = None  # position-aware drafting after the token embedding (drafters; None: none)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if isinstance(self.pad, dict):  # read back from json
            object.__setattr__(self, "pad", PADConfig(**self.pad))

    @classmethod
    def preset(cls, vocab_size: int, size: str, **fields) -> "ModelConfig":
        """The named shape `size` of MODEL_PRESETS for a vocabulary of `vocab_size` tokens (the catalogue's
        `vocab.size`); `fields` override any other field (e.g. dropout). An unknown size raises ValueError."""
        if size not in MODEL_PRESETS:
            raise ValueError(f"unknown model size {size!r}; choose from {sorted(MODEL_PRESETS)}")
        return cls(vocab_size=vocab_size, **{**MODEL_PRESETS[size], **fields})

    def num_parameters(self) -> int:
        c, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        kv = self.num_kv_heads * self.head_dim
        per_layer = c * c * 2 + c * kv * 2 + 3 * c * f + 2 * c
        head = 0 if self.tie_embeddings else v * c
        return v * c + self.num_layers * per_layer + c + head


# Named sizes (`ModelConfig.preset`): `recspec train --size small` etc.
MODEL_PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64),
    "draft": dict(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=128),
    "demo": dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=344),
    "small": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=688),
    # small's width, twice the depth: on a CPU a call's cost grows with depth more than with tokens
    "deep": dict(hidden_size=256, num_layers=8, num_heads=4, num_kv_heads=2, intermediate_size=688),
    "base": dict(hidden_size=512, num_layers=6, num_heads=8, num_kv_heads=4, intermediate_size=1376),
    # ~0.5B LLaMA shape, for the GPU benchmark
    "gpu-0.5b": dict(hidden_size=1536, num_layers=16, num_heads=12, num_kv_heads=4, intermediate_size=4096),
}


@dataclass(frozen=True)
class TrainConfig:
    """One training run of a target or a plain (cross-entropy) draft model."""

    epochs: int = 10  # passes over the training windows (the schedule's length unless `steps` is set)
    steps: int = 0  # optimiser steps of the whole schedule, fixed up front: the cosine decay ends here (0: epochs)
    batch_size: int = 64  # sequences per optimiser step
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 100  # linear warm-up before the cosine decay
    grad_clip: float = 1.0  # max gradient norm
    window_items: int = 21  # items per training window (20 of history + the next)
    window_stride: int = 10  # items between window starts; each item is a target once
    eval_every: int = 0  # validation Recall@10 every N steps (0: once per epoch)
    eval_users: int = 0  # validation users scored at each evaluation (0: all)
    patience: int = 0  # stop once this many validations in a row have not beaten the best (0: never)
    fit: str = "train"  # sequences trained on: "train" (validated on the valid period) or "train+valid" (the
    #                     final fit for test-time use: nothing left to validate on, so last/ is the model)
    precision: str = "auto"  # "fp32", "bf16" (autocast around each step's forward and loss), "auto": bf16 on a GPU
    seed: int = 0  # shuffling and initialisation
    max_steps: int = 0  # stop after this many steps, without changing the schedule (0: no limit)
    time_limit_s: float = 0.0  # stop after this many seconds of training (0: no limit)
    threads: int = 0  # torch CPU threads (0: torch's default)
    optimizer_state: bool = True  # keep AdamW's state in last/ so the run can resume (False: weights only)

    def __post_init__(self) -> None:
        if self.fit not in FIT_CHOICES:
            raise ValueError(f"fit must be one of {', '.join(FIT_CHOICES)}, got {self.fit!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.steps < 0 or self.patience < 0 or self.eval_users < 0:
            raise ValueError("steps, patience and eval_users must be >= 0")


FIT_CHOICES = ("train", "train+valid")  # TrainConfig.fit
PRECISIONS = ("auto", "fp32", "bf16")  # TrainConfig.precision


# Most tree nodes fed to the target per call (per user) by the auto tree shape (decoding/tree_shape.py),
# by where the target runs. A pass reads every weight once whatever it is fed; on a GPU it stays bound by
# those reads up to about peak FLOP/s / memory bandwidth tokens (bf16: 2 FLOPs and 2 bytes per weight
# per token; H100/H200: 989 TFLOP/s over 3.35-4.8 TB/s, 200-300 tokens), so a tree of a couple of
# hundred nodes costs about one autoregressive step there. A CPU is compute-bound from the first tokens:
# every fed node costs about what a pending beam token does, and a call's fixed cost is worth a few
# dozen tokens at most (the 2-core machine of the README: 'deep' 2.7 ms + 0.08 ms per token, 'small'
# 2.1 ms + 0.25 ms), so a tree larger than that costs more than the call it saves.
GPU_TREE_BUDGET = 256
CPU_TREE_BUDGET = 16


@dataclass(frozen=True)
class TreeConfig:
    """The draft tree of the speculative modes. All six None (the default): auto, the shape derived from
    the catalogue's trie, K and `budget` (decoding/tree_shape.py). Any of the first five set: an explicit
    shape, whose unset fields take the classic values (N 40, gamma 3, expand 2, no depths or widths)."""

    draft_beams: int | None = None  # N >= K nodes per tree level
    gamma: int | None = None  # draft depth: levels drafted per round
    expand: float | None = None  # below a tree's first level, extend only the draft's best expand*K nodes (0: all N)
    depths: tuple[int, ...] | None = None  # draft depth by the SID level a round starts from (gamma past the end)
    widths: tuple[int, ...] | None = None  # most drafted nodes per tree level, by SID level, each <= N (N past the end)
    budget: int | None = None  # auto: most tree nodes per target call (None: GPU_ / CPU_TREE_BUDGET by device)

    @property
    def explicit(self) -> bool:
        return (self.draft_beams, self.gamma, self.expand, self.depths, self.widths) != (None,) * 5


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs the rounds: the same math, eagerly or with fixed shapes."""

    cuda_graphs: bool = False  # capture each round shape once as a CUDA graph and replay it (CUDA only)
    compile: bool = False  # rounds through torch.compile (fused kernels; captured as graphs with cuda_graphs)
    fixed_shapes: bool = False  # the fixed shapes of graph replay, without capturing (tests the graphs' math on a CPU)
    prompt_width: int | None = None  # left-pad every prompt to this many columns, so batches share one buffer
    #                                  shape (None: each batch's own; under graphs or compile the longest prompt)

    @property
    def static(self) -> bool:
        """Rounds keep fixed shapes (no tree trimming, no early exit, no host sync inside a round)."""
        return self.cuda_graphs or self.compile or self.fixed_shapes


VERIFY_RULES = ("strict", "relaxed", "topk-beta")  # DecodeConfig.verify: decoding/verify.py RULES


@dataclass(frozen=True)
class DecodeConfig:
    """How recommendations are decoded: the one description of a decoding run, for the CLI, the Python API,
    benchmarks and scripts (`decoding.engine.build_engine`)."""

    K: int = 10  # target beams = items returned per user
    batch_size: int = 32  # users decoded together
    verify: str = "strict"  # "strict" (exactly the target's beam search), "relaxed" (its sampling beam search),
    #                         "topk-beta" (greedy, K = 1: keep a drafted token within the top accept_k above accept_beta)
    temperature: float = 1.0  # relaxed: sample from cumulative log-probs / temperature (-> top-K as it -> 0)
    seed: int = 0  # relaxed verification's sampling
    eos: bool = False  # score <eos> after an item's L codes, an (L+1)-th target call (transformers' generate);
    #                    off: L calls, an item's score is the sum of its code log-probs (every item has L codes)
    exclude_history: bool = False  # never recommend an item of the user's history (the trie is pruned per user);
    #                                off: history items may be recommended, as the model ranks them
    accept_k: int = 2  # topk-beta: a drafted token may rank up to accept_k-th under the target (1: greedy exactly)
    accept_beta: float = 0.1  # topk-beta: ... and must have a target probability above accept_beta
    tree: TreeConfig = TreeConfig()  # the draft tree (speculative modes; ignored without a drafter)
    engine: EngineConfig = EngineConfig()  # eager, CUDA graphs, compile

    def __post_init__(self) -> None:
        if self.K < 1 or self.batch_size < 1:
            raise ValueError(f"K and batch size must be >= 1, got K={self.K}, batch size {self.batch_size}")
        if self.verify not in VERIFY_RULES:
            raise ValueError(f"verify must be one of {', '.join(VERIFY_RULES)}, got {self.verify!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def replace(self, **changes) -> "DecodeConfig":
        """A copy with fields changed; tree.* and engine.* fields by name (`cfg.replace(K=5, gamma=2)`)."""
        tree = {k: changes.pop(k) for k in list(changes) if k in _TREE_FIELDS}
        engine = {k: changes.pop(k) for k in list(changes) if k in _ENGINE_FIELDS}
        base_tree, base_engine = changes.pop("tree", self.tree), changes.pop("engine", self.engine)
        return dataclasses.replace(self, **changes, tree=dataclasses.replace(base_tree, **tree),
                                   engine=dataclasses.replace(base_engine, **engine))


_TREE_FIELDS = {f.name for f in dataclasses.fields(TreeConfig)}
_ENGINE_FIELDS = {f.name for f in dataclasses.fields(EngineConfig)}


def parse_shape_list(text: str, what: str) -> tuple[int, ...] | None:
    """--depths / --widths: 'auto' -> None (DecodeConfig's auto shape); else `parse_depths`."""
    return None if text.strip() == "auto" else parse_depths(text, what=what)


def parse_depths(text: str, sep: str = ",", what: str = "depths") -> tuple[int, ...]:
    """'1,3,2' -> (1, 3, 2); '' -> () (DecodeConfig.depths, .widths). A bad entry raises ValueError naming it."""
    out = []
    for part in (p.strip() for p in text.split(sep) if p.strip()):
        if not part.isdigit():
            raise ValueError(f"{what} {text!r}: {part!r} is not a {what.rstrip('s')} (non-negative integers, e.g. 1{sep}3{sep}2)")
        out.append(int(part))
    return tuple(out)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, d: dict):
    """Build a config from a dict, refusing unknown keys (a typo must not silently become a default)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}")
    return cls(**d)


OBJECTIVE_NAMES = ("ce", "wordkd", "tvd", "seqkd", "atspeed-s", "atspeed-r")  # training/distill.py OBJECTIVES


@dataclass(frozen=True)
class DistillConfig:
    """One draft-alignment run (training/distill.py): a draft learns from the target's teacher data."""

    objective: str = "atspeed-s"  # one of OBJECTIVE_NAMES
    alpha: float = 0.7  # loss = (1 - alpha) * CE(ground truth) + alpha * alignment loss (not for "ce")
    K: int = 20  # AtSpeed-S: the student's top-K tokens its reverse KL keeps apart (the paper's code: 20)
    beta: float = 1.0  # AtSpeed-S: weight of the density (entropy) term
    epochs: int = 10  # passes over the teacher examples
    batch_size: int = 64  # teacher examples per optimiser step (and users per validation decoding call)
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 100  # linear warm-up before the cosine decay
    grad_clip: float = 1.0  # max gradient norm
    eval_every: int = 0  # validate every N steps (0: once per epoch)
    eval_users: int = 200  # validation users decoded (strict and relaxed) at each validation (0: none)
    eval_decode: DecodeConfig = DecodeConfig(tree=TreeConfig(draft_beams=40, gamma=3))  # the validation decoding
    #   (its K target beams, its tree; batch_size is this config's; verify: both rules are run)
    seed: int = 0  # shuffling, initialisation, relaxed verification's sampling
    max_steps: int = 0  # stop after this many steps (0: no limit)
    time_limit_s: float = 0.0  # stop after this many seconds (0: no limit)
    threads: int = 0  # torch CPU threads (0: torch's default)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVE_NAMES:
            raise ValueError(f"unknown objective {self.objective!r}; choose from {', '.join(OBJECTIVE_NAMES)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.K < 1 or self.batch_size < 1:
            raise ValueError("K and batch_size must be >= 1")


# Objectives of drafters trained on the target's own hidden states and distributions over the training
# sequences, no teacher data (training/unrolled.py): `recspec distill train --objective feature-head`. Kept
# apart from OBJECTIVE_NAMES, the teacher-data objectives the distillation experiment trains one draft each for.
UNROLLED_OBJECTIVES = ("feature-head", "draft-unrolled")


@dataclass(frozen=True)
class UnrollConfig:
    """One unrolled drafter training run (training/unrolled.py). Every run takes exactly `steps` seeded
    optimiser steps: the clock never decides what a drafter learns, so ablation variants compare fairly.

    feature-head    an EAGLE-style head (models/heads.py) on the target's hidden states: pass 0 reads the
                    target's features, pass k = 1..unroll its own pass k - 1 predictions, with step index k;
                    loss = mean over passes of feature_weight * SmoothL1(feature) + ce_weight * soft CE
    draft-unrolled  a draft decoder of --size: each window is cut into simulated rounds (a pending token at
                    step 0, then drafted tokens at steps 1..unroll, as the draft model drafter feeds them);
                    loss = soft CE against the target's next-token distribution at every position
    """

    objective: str = "feature-head"  # one of UNROLLED_OBJECTIVES
    steps: int = 2000  # optimiser steps of the run (the schedule's length; the same for every variant)
    batch_size: int = 32  # training windows per step
    lr: float = 1e-3  # peak AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 100  # linear warm-up before the cosine decay
    grad_clip: float = 1.0  # max gradient norm
    unroll: int = 3  # k_max: unrolled draft steps after pass 0 (the PAD module's largest step index)
    feature_weight: float = 1.0  # feature-head: weight of SmoothL1(predicted feature, target's next hidden)
    ce_weight: float = 0.1  # feature-head: weight of the soft cross-entropy to the target's next-token distribution
    pad_slot: bool = False  # PAD slot embeddings (PADConfig.slot); no PAD module when neither slot nor step
    pad_step: bool = False  # PAD step embeddings (PADConfig.step)
    pad_gate: bool = True  # gate the step embedding (PADConfig.gate)
    window_items: int = 21  # items per training window (as TrainConfig)
    window_stride: int = 10  # items between window starts
    precision: str = "auto"  # "fp32", "bf16", "auto": bf16 on a GPU (as TrainConfig)
    seed: int = 0  # batch order, round cuts (draft-unrolled)
    max_steps: int = 0  # stop after this many steps without changing the schedule (0: run all `steps`)
    threads: int = 0  # torch CPU threads (0: torch's default)

    def __post_init__(self) -> None:
        if self.objective not in UNROLLED_OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose from {', '.join(UNROLLED_OBJECTIVES)}")
        if self.steps < 1 or self.batch_size < 1 or self.unroll < 0:
            raise ValueError("steps and batch_size must be >= 1, unroll >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def pad(self, level_sizes: tuple[int, ...]) -> PADConfig | None:
        """The PAD module these switches ask for over a catalogue's SID levels (None: neither slot nor step)."""
        if not (self.pad_slot or self.pad_step):
            return None
        return PADConfig(level_sizes, k_max=self.unroll, slot=self.pad_slot, step=self.pad_step, gate=self.pad_gate)
