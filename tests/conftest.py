"""Fixtures shared by the test files: GPT-2's tokenizer, tiny models, a tiny hub checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from correcteur.model import GPTModel
from correcteur.tokenizer import get_tokenizer

# Tiny models on a shared 2-core machine run many times faster on one thread than on two
# threads fighting other processes.
torch.set_num_threads(1)

TINY_GPT_CONFIG = {
    "vocab_size": 50257,  # GPT-2's real vocabulary, so real tokenized text can go in
    "context_length": 128,
    "emb_dim": 64,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": True,
}


@pytest.fixture(scope="session")
def tokenizer():
    return get_tokenizer("gpt2")


@pytest.fixture
def tiny_gpt() -> GPTModel:
    """A 2-layer, 64-dim GPT-2 with seeded random weights, in eval mode."""
    torch.manual_seed(123)
    return GPTModel(TINY_GPT_CONFIG).eval()


@pytest.fixture(scope="session")
def hf_gpt2_dir(tmp_path_factory):
    """A random `transformers` GPT-2 of the tiny shape, saved in the hub's layout
    (config.json + model.safetensors), the reference the loaders are checked against.

    Every parameter gets noise: freshly initialised biases (zeros) and layer norms (ones)
    would hide a bias or a gain loaded into the wrong place."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=50257)
    path = tmp_path_factory.mktemp("hf-gpt2")
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def real_smollm2():
    """The real SmolLM2-135M-Instruct, its tokenizer and info, loaded once for every test file
    that needs it (dequantizing its GGUF file takes 10 s or more); the tests skip without it."""
    from correcteur import fetch, weights

    path = Path(__file__).parents[1] / "checkpoints" / fetch.SMOLLM2_DIR / Path(fetch.SMOLLM2_MEMBER).name
    if not path.is_file():
        pytest.skip(f"{path} not downloaded")
    return weights.load_smollm2(path.parents[1])
