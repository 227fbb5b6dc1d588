"""Shared fixtures: the shipped datasets (../shared beside the repo, or $RECSPEC_SHARED), the toy
catalogue that stands in for Beauty where they are absent, and tiny random decoders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from item_corpus import write_item_json  # noqa: E402  (tests/ is on the path)
from toy_catalogue import write_toy  # noqa: E402
from recspec.config import ModelConfig
from recspec.data.sids import SIDIndex
from recspec.data.vocab import Vocab
from recspec.models.decoder import Decoder

# RECSPEC_SHARED=/nonexistent: these fixtures act as on a clone without ../shared (the toy stands in for
# Beauty); tests/data, test_recommend_ids.py and tests/bench still find ../shared by their own paths
SHARED = Path(os.environ.get("RECSPEC_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
SHARED_DATASETS = SHARED / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The folder holding beauty/ and office/; the test is skipped where it is missing."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"shared datasets not present at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def optional_shared_datasets() -> Path | None:
    """The folder holding beauty/ and office/, None where it is missing (the test runs on what it has)."""
    return SHARED_DATASETS if SHARED_DATASETS.is_dir() else None


@pytest.fixture(scope="session")
def sequential_dataset(tmp_path_factory) -> Path:
    """A sequential (AtSpeed-format) dataset folder with its *.index.json: Beauty where the shared
    datasets hold it, else the toy catalogue (573 items, 4-level SIDs, 80 level-1 codes) that
    `toy_catalogue.write_toy` writes, deterministically, into a temporary folder."""
    beauty = SHARED_DATASETS / "beauty"
    return beauty if (beauty / "beauty.index.json").is_file() else write_toy(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def beauty_index(sequential_dataset: Path) -> SIDIndex:
    """The SID index of `sequential_dataset`: Beauty's, or the toy's where Beauty is absent."""
    return SIDIndex.load(next(sequential_dataset.glob("*.index.json")))


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


@pytest.fixture
def text_items(tmp_path: Path) -> Path:
    """A folder with a tiny LC-Rec `*.item.json` of 40 office items (`write_item_json`)."""
    return write_item_json(tmp_path / "tiny").parent
