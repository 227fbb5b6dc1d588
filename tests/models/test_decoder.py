"""The decoder against Hugging Face's LlamaForCausalLM, and checkpoints in both directions."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from recspec.data.vocab import PAD, Prompts, Vocab  # noqa: E402
from recspec.decoding.prompt import prefill, prefill_mask, prompt_key_mask, prompt_positions  # noqa: E402
from recspec.errors import CheckpointError  # noqa: E402
from recspec.models.hf import CheckpointMeta, check_fits, hf_config, load_checkpoint, save_checkpoint  # noqa: E402

VOCAB = Vocab(level_sizes=(7, 5, 6), prefixes=("a", "b", "c"))  # 21 tokens
ATOL = 1e-4

# (num_heads, num_kv_heads, num_layers, tie_embeddings)
CONFIGS = [
    pytest.param(4, 2, 2, False, id="gqa"),
    pytest.param(4, 2, 1, True, id="gqa-tied"),
    pytest.param(2, 2, 2, False, id="mha"),
    pytest.param(2, 2, 1, True, id="mha-tied"),
]


def to_hf(model) -> "transformers.LlamaForCausalLM":
    """A LlamaForCausalLM built from hf_config holding the same weights."""
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config(model.cfg)))
    hf.load_state_dict(model.state_dict())
    return hf.eval()


def hf_logits(hf, tokens: list[int]) -> torch.Tensor:
    """One unpadded sequence -> (T, V) logits."""
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0]


def random_rows(lengths: list[int], seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB.size, (n,), generator=gen).tolist() for n in lengths]


def left_padded(rows: list[list[int]]) -> Prompts:
    T = max(len(r) for r in rows)
    tokens = torch.full((len(rows), T), PAD, dtype=torch.int64)
    for i, r in enumerate(rows):
        tokens[i, T - len(r):] = torch.tensor(r)
    return Prompts(tokens, torch.tensor([len(r) for r in rows]))


@pytest.mark.parametrize("heads,kv_heads,layers,tie", CONFIGS)
def test_forward_train_matches_hf(make_decoder, heads, kv_heads, layers, tie):
    model = make_decoder(VOCAB, seed=1, num_heads=heads, num_kv_heads=kv_heads, num_layers=layers, tie_embeddings=tie)
    hf = to_hf(model)
    rows = random_rows([9, 3, 14, 1], seed=2)
    T = max(len(r) for r in rows)
    tokens = torch.tensor([r + [PAD] * (T - len(r)) for r in rows])  # right-padded
    with torch.no_grad():
        ours = model.forward_train(tokens)  # (B, T, V)
    for i, r in enumerate(rows):
        torch.testing.assert_close(ours[i, : len(r)], hf_logits(hf, r), atol=ATOL, rtol=0)


@pytest.mark.parametrize("heads,kv_heads,layers,tie", CONFIGS)
def test_cached_forward_matches_hf(make_decoder, heads, kv_heads, layers, tie):
    """Left-padded prefill into the slot cache, then one cached decode step, against HF on the
    unpadded prompt (and the prompt plus the next token)."""
    model = make_decoder(VOCAB, seed=3, num_heads=heads, num_kv_heads=kv_heads, num_layers=layers, tie_embeddings=tie)
    hf = to_hf(model)
    rows = random_rows([5, 12, 1, 8], seed=4)
    prompts = left_padded(rows)
    B, T = prompts.tokens.shape
    S = T + 3  # spare slots beyond the prompt
    with torch.no_grad():
        cache, logp = prefill(model, prompts, S)  # (B, V) next-token log-probs
        all_logits = model(prompts.tokens, prompt_positions(prompts), prefill_mask(prompts, S), model.new_cache(B, S),
                           torch.arange(T).expand(B, T))  # (B, T, V)
        nxt = torch.tensor([[3 + i] for i in range(B)])  # (B, 1) one more token per row
        mask = prompt_key_mask(prompts, S).clone()
        mask[:, T + 1] = True  # the new token sits in slot T + 1 (not adjacent to the prompt, on purpose)
        step = model(nxt, prompts.lengths[:, None], mask[:, None, :], cache, torch.full((B, 1), T + 1))  # (B, 1, V)
    for i, r in enumerate(rows):
        ref = hf_logits(hf, r)
        torch.testing.assert_close(all_logits[i, T - len(r):], ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(logp[i], torch.log_softmax(ref[-1], -1), atol=ATOL, rtol=0)
        torch.testing.assert_close(step[i, 0], hf_logits(hf, r + nxt[i].tolist())[-1], atol=ATOL, rtol=0)


# --- checkpoints ----------------------------------------------------------------------------------
META = CheckpointMeta(vocab=VOCAB, index_fingerprint="0123456789abcdef", role="target", extra={"steps": 7})
PROBE = torch.tensor([[1, 3, 12, 16, 2, 4, 10, 18, 2]])  # one prompt-like sequence


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_train(PROBE)


@pytest.mark.parametrize("tie", [False, True])
def test_checkpoint_round_trip(make_decoder, tmp_path, tie):
    model = make_decoder(VOCAB, seed=5, num_layers=2, tie_embeddings=tie)
    save_checkpoint(model, META, tmp_path / "ck")
    save_checkpoint(model, META, tmp_path / "ck")  # overwriting an existing checkpoint works too
    loaded, meta = load_checkpoint(tmp_path / "ck")
    assert loaded.cfg == model.cfg
    assert meta == META
    assert torch.equal(logits(loaded), logits(model))
    if tie:
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


@pytest.mark.parametrize("tie", [False, True])
def test_hf_loads_our_checkpoint(make_decoder, tmp_path, tie):
    model = make_decoder(VOCAB, seed=6, num_heads=4, num_kv_heads=2, tie_embeddings=tie)
    save_checkpoint(model, META, tmp_path / "ck")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ck").eval()
    with torch.no_grad():
        theirs = hf(PROBE).logits
    torch.testing.assert_close(theirs, logits(model), atol=ATOL, rtol=0)


@pytest.mark.parametrize("tie", [False, True])
def test_we_load_hf_save_pretrained(make_decoder, tmp_path, tie):
    hf = to_hf(make_decoder(VOCAB, seed=7, num_heads=4, num_kv_heads=2, tie_embeddings=tie))
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    model, meta = load_checkpoint(tmp_path / "hf")
    assert meta is None  # a plain HF folder carries no recspec.json
    with torch.no_grad():
        theirs = hf(PROBE).logits
    torch.testing.assert_close(logits(model), theirs, atol=ATOL, rtol=0)


@pytest.fixture
def saved(make_decoder, tmp_path):
    folder = tmp_path / "ck"
    save_checkpoint(make_decoder(VOCAB, seed=8), META, folder)
    return folder


def edit_config(folder, **changes) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_load_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"not a checkpoint folder \(config.json missing\)"):
        load_checkpoint(tmp_path / "nowhere")


def test_load_missing_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors missing"):
        load_checkpoint(saved)


@pytest.mark.parametrize("text,message", [
    ('{"vocab_size": 21, "hidden', r"config.json: line 1: not valid json"),
    ("[1, 2]", r"config.json: expected a json object"),
    ('{"model_type": "llama"}', r"config.json: missing field 'vocab_size'"),
])
def test_load_corrupt_config(saved, text, message):
    (saved / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(saved)


def test_load_config_with_impossible_shape(saved):
    edit_config(saved, num_attention_heads=3)  # 32 is not a multiple of 3
    with pytest.raises(CheckpointError, match=r"config.json: .*not a multiple of num_heads 3"):
        load_checkpoint(saved)


def test_load_weights_missing_a_layer(saved):
    edit_config(saved, num_hidden_layers=2)  # the file holds one layer
    with pytest.raises(CheckpointError, match=r"weights do not match config.json \(missing \['model.layers.1"):
        load_checkpoint(saved)


@pytest.mark.parametrize("field,value", [("hidden_size", 64), ("vocab_size", 40), ("intermediate_size", 48)])
def test_load_weights_of_wrong_shape(saved, field, value):
    changes = {field: value}
    if field == "hidden_size":
        changes["head_dim"] = value // 2
    edit_config(saved, **changes)
    with pytest.raises(CheckpointError, match=r"weights do not match config.json \(.* has shape"):
        load_checkpoint(saved)


def test_load_corrupt_weights(saved):
    (saved / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a readable safetensors file"):
        load_checkpoint(saved)


def test_load_corrupt_metadata(saved):
    (saved / "recspec.json").write_text('{"role": "target"}')
    with pytest.raises(CheckpointError, match=r"recspec.json: malformed recspec metadata"):
        load_checkpoint(saved)


def test_check_fits(saved):
    _, meta = load_checkpoint(saved)
    check_fits(meta, VOCAB, META.index_fingerprint, "ck")  # the right data passes
    other = Vocab(level_sizes=(7, 5, 9), prefixes=VOCAB.prefixes)
    with pytest.raises(CheckpointError, match=r"ck: vocabulary \(7, 5, 6\) does not match the data's \(7, 5, 9\)"):
        check_fits(meta, other, META.index_fingerprint, "ck")
    with pytest.raises(CheckpointError, match=r"ck: trained on a different SID index .*0123456789abcdef != feedfeedfeedfeed"):
        check_fits(meta, VOCAB, "feedfeedfeedfeed", "ck")
    with pytest.raises(CheckpointError, match=r"no recspec.json"):
        check_fits(None, VOCAB, META.index_fingerprint, "ck")


def test_fused_inference_weights_give_the_same_logits():
    """fuse_for_inference (one q/k/v GEMM, one gate/up GEMM) computes the same function."""
    import torch

    from recspec.config import ModelConfig
    from recspec.models.decoder import Decoder

    torch.manual_seed(3)
    model = Decoder(ModelConfig(vocab_size=40, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                intermediate_size=48)).eval()
    tokens = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        plain = model.forward_train(tokens)
        fused = model.fuse_for_inference().forward_train(tokens)
        again = model.unfuse().forward_train(tokens)
    assert torch.allclose(plain, fused, atol=1e-5)
    assert torch.equal(plain, again)

