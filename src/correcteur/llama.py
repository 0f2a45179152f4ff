"""Llama-family models from scratch (SmolLM2, Qwen2.5, Llama-3.2 style).

The model follows `GPTModel` (same forward, cache and training interface, so `generate`, training
and the app work unchanged) with the four changes that make a Llama: RMSNorm instead of
LayerNorm, rotary position embeddings instead of a learned position table, grouped-query
attention (fewer key/value heads than query heads) and a SwiGLU feed-forward. Module names follow
the course's Llama chapter (`tok_emb, trf_blocks[i].att.W_query, ff.fc1/fc2/fc3, final_norm,
out_head`), so that LoRA targets read the same in both families.

The model only computes; `weights.py` fills it from a GGUF file or a Hugging Face directory, and
`tokenizer.py` holds its tokenizer.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from correcteur.model import CausalLM, KVCache, positions_and_mask, select_positions

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
