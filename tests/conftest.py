"""Shared fixtures: the shipped datasets (../shared beside the repo) and tiny random decoders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recspec.config import ModelConfig
from recspec.data.sids import SIDIndex
from recspec.data.vocab import Vocab
from recspec.models.decoder import Decoder

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The folder holding beauty/ and office/; the test is skipped where it is missing."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"shared datasets not present at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def beauty_index(shared_datasets: Path) -> SIDIndex:
    path = shared_datasets / "beauty" / "beauty.index.json"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return SIDIndex.load(path)


def tiny_decoder(vocab: Vocab | int, seed: int = 0, std: float = 0.3, **sizes) -> Decoder:
    """A small random fp32 decoder in eval mode. Weights are re-drawn with a large `std` (and the
    RMSNorm gains jittered around 1) so next-token distributions are far from flat and beam search
    orderings are decided by clear margins, not by float noise.

    sizes: ModelConfig fields overriding the defaults below (e.g. num_kv_heads, tie_embeddings)."""
    vocab_size = vocab if isinstance(vocab, int) else vocab.size
    fields = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, max_positions=256)
    fields.update(sizes)
    model = Decoder(ModelConfig(vocab_size=vocab_size, **fields))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights appear once
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="session")
def make_decoder():
    """`make_decoder(vocab_or_size, seed=0, std=0.3, **ModelConfig fields)` -> a tiny random Decoder."""
    return tiny_decoder


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): its tests and
    module fixtures (trained models) run on one core, so the suite does not oversubscribe a small machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
