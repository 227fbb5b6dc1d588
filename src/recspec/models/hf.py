"""Checkpoints as Hugging Face `LlamaForCausalLM` folders: config.json + model.safetensors.

recspec adds recspec.json beside them: the SID vocabulary, the index fingerprint and the model's
role, so a checkpoint that does not fit the data is refused with a clear error. Weights are read
with safetensors only (never pickle).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from recspec.config import ModelConfig, PADConfig, to_dict
from recspec.data.vocab import BOS, EOS, PAD, Vocab
from recspec.errors import CheckpointError
from recspec.models.decoder import Decoder


@dataclass(frozen=True)
class CheckpointMeta:
    vocab: Vocab  # SID vocabulary the model was trained with
    index_fingerprint: str  # SIDIndex.fingerprint() of the catalogue
    role: str = "target"  # "target" or "draft"
    extra: dict | None = None  # training info (dataset, steps, metrics)


def hf_config(cfg: ModelConfig) -> dict:
    pad = {"recspec_pad": to_dict(cfg.pad)} if cfg.pad is not None else {}  # ours; absent: no PAD module
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_positions,
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "recspec_dropout": cfg.dropout,  # training-only residual dropout (ours; transformers ignores it)
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "pad_token_id": PAD,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "torch_dtype": "float32",
        **pad,
    }


def model_config_from_hf(d: dict, where: str) -> ModelConfig:
    if d.get("model_type") not in (None, "llama"):
        raise CheckpointError(f"{where}: model_type {d.get('model_type')!r} is not llama")
    if d.get("hidden_act", "silu") != "silu" or d.get("attention_bias") or d.get("mlp_bias"):
        raise CheckpointError(f"{where}: only silu activations and bias-free LLaMA layers are supported")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise CheckpointError(f"{where}: rope scaling {rope.get('rope_type')!r} is not supported")
    try:
        cfg = ModelConfig(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"], num_kv_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
            intermediate_size=d["intermediate_size"], max_positions=d.get("max_position_embeddings", 512),
            rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))), rms_eps=d.get("rms_norm_eps", 1e-6),
            tie_embeddings=bool(d.get("tie_word_embeddings", False)), dropout=float(d.get("recspec_dropout", 0.0)),
            pad=PADConfig(**d["recspec_pad"]) if d.get("recspec_pad") else None)
    except KeyError as e:
        raise CheckpointError(f"{where}: missing field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:  # wrong field types, heads not dividing the width
        raise CheckpointError(f"{where}: {e}") from None
    if d.get("head_dim", cfg.head_dim) != cfg.head_dim:
        raise CheckpointError(f"{where}: head_dim {d['head_dim']} != hidden_size / num_heads")
    return cfg


def save_checkpoint(model: Decoder, meta: CheckpointMeta, folder: str | os.PathLike) -> None:
    """Write the folder atomically: files go to a temp folder that then replaces the target."""
    folder = os.fspath(folder)
    tmp = folder.rstrip("/") + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(hf_config(model.cfg), f, indent=2)
    write_meta(tmp, meta)
    replace_folder(tmp, folder)


def write_meta(folder: str, meta: CheckpointMeta) -> None:
    """folder/recspec.json: what the checkpoint was trained on (read back by `read_meta`)."""
    with open(os.path.join(folder, "recspec.json"), "w") as f:
        json.dump({"vocab": meta.vocab.to_dict(), "index_fingerprint": meta.index_fingerprint,
                   "role": meta.role, "extra": meta.extra or {}}, f, indent=2)


def replace_folder(tmp: str, folder: str) -> None:
    """Rename the finished folder `tmp` to `folder`, replacing what was there."""
    if os.path.isdir(folder):
        old = folder.rstrip("/") + ".old"
        os.replace(folder, old)
        os.replace(tmp, folder)
        import shutil

        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


def read_json(path: str) -> dict:
    """A json object from `path` (CheckpointError where it is not one)."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: line {e.lineno}: not valid json") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a json object, got {type(raw).__name__}")
    return raw


def load_weights(module: torch.nn.Module, path: str, config: str, tied: tuple[str, str] | None = None) -> None:
    """Load safetensors weights into `module` (built from the file named `config`), refusing missing,
    unexpected or misshapen tensors. tied: (name, source) filled from source where the file leaves it out."""
    try:
        state = load_file(path)
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    if tied is not None and tied[1] in state:
        state.setdefault(tied[0], state[tied[1]])
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match {config} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    wrong = [k for k in expected if state[k].shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{path}: weights do not match {config} ({k} has shape {tuple(state[k].shape)}, "
                              f"{config} implies {tuple(expected[k].shape)})")
    module.load_state_dict(state)


def read_meta(folder: str) -> CheckpointMeta | None:
    """folder/recspec.json as written by `write_meta`; None where there is none."""
    meta_path = os.path.join(folder, "recspec.json")
    if not os.path.isfile(meta_path):
        return None
    try:
        with open(meta_path) as f:
            m = json.load(f)
        return CheckpointMeta(Vocab.from_dict(m["vocab"]), m["index_fingerprint"], m.get("role", "target"), m.get("extra"))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{meta_path}: malformed recspec metadata ({type(e).__name__}: {e})") from None


def load_checkpoint(folder: str | os.PathLike, device="cpu", dtype=torch.float32) -> tuple[Decoder, CheckpointMeta | None]:
    """Load ours or any bias-free LLaMA checkpoint (then meta is None)."""
    folder = os.fspath(folder)
    cfg_path, w_path = os.path.join(folder, "config.json"), os.path.join(folder, "model.safetensors")
    for p in (cfg_path, w_path):
        if not os.path.isfile(p):
            raise CheckpointError(f"{folder}: not a checkpoint folder ({os.path.basename(p)} missing)")
    cfg = model_config_from_hf(read_json(cfg_path), cfg_path)
    model = Decoder(cfg)
    load_weights(model, w_path, "config.json", ("lm_head.weight", "model.embed_tokens.weight") if cfg.tie_embeddings else None)
    return model.to(device=device, dtype=dtype).eval(), read_meta(folder)


INFERENCE_PRECISIONS = ("fp32", "bf16", "bf16-all")  # for_inference / load_for_inference


def for_inference(model: Decoder, precision: str = "fp32") -> Decoder:
    """In place: a model ready to decode, in eval mode with fused q/k/v and gate/up GEMMs. precision: "fp32";
    "bf16" (`Decoder.bf16_inference`: bf16 layers, fp32 residual stream, final norm and LM head); "bf16-all"
    (every weight bf16, the norm and LM head included: what bench/gpu_bench.py has always timed)."""
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {precision!r}")
    if precision == "bf16":
        return model.bf16_inference()
    if precision == "bf16-all":
        model = model.to(torch.bfloat16)
    return model.eval().fuse_for_inference()


def load_for_inference(folder: str | os.PathLike, device="cpu", precision: str = "fp32") -> Decoder:
    """`load_checkpoint` (fp32 weights on `device`), then `for_inference(model, precision)`."""
    return for_inference(load_checkpoint(folder, device=device)[0], precision)


def check_fits(meta: CheckpointMeta | None, vocab: Vocab, fingerprint: str, where: str) -> None:
    """Refuse a checkpoint whose vocabulary or SID index differs from the data's."""
    if meta is None:
        raise CheckpointError(f"{where}: no recspec.json; cannot check it was trained on this catalogue")
    if meta.vocab != vocab:
        raise CheckpointError(f"{where}: vocabulary {meta.vocab.level_sizes} does not match the data's {vocab.level_sizes}")
    if meta.index_fingerprint != fingerprint:
        raise CheckpointError(f"{where}: trained on a different SID index (fingerprint {meta.index_fingerprint} != {fingerprint})")


def trained_on(folder: str | os.PathLike) -> str:
    """What a checkpoint of ours was trained on: "train" or "train+valid" (TrainConfig.fit; runs saved before
    the field existed trained on "train"); "unknown" for a checkpoint without our training record."""
    path = os.path.join(os.fspath(folder), "recspec.json")
    try:
        with open(path) as f:
            train = (json.load(f).get("extra") or {}).get("train") or {}
    except (OSError, json.JSONDecodeError):
        return "unknown"
    cfg = train.get("train_config")
    return cfg.get("fit", "train") if isinstance(cfg, dict) else "unknown"
