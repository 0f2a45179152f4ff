"""GPT-2 from scratch: the configurations, the model and a KV cache (loading lives in weights.py).

The names follow the course ("Build a Large Language Model (From Scratch)", chapter 4):
`GPTModel(cfg)` with `tok_emb, pos_emb, drop_emb, trf_blocks, final_norm, out_head`. Two things
differ from the course, both needed to be exactly GPT-2 and fast: the output head shares its
weight with the token embedding (as OpenAI's GPT-2 does), and attention runs through
`scaled_dot_product_attention` with an optional KV cache and left-padding mask.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

BASE_CONFIG = {
    "vocab_size": 50257,  # GPT-2's byte-pair vocabulary
    "context_length": 1024,
    "drop_rate": 0.0,
    "qkv_bias": True,  # OpenAI's checkpoints have biases on the query/key/value projections
}

model_configs = {
    "gpt2-small (124M)": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-medium (355M)": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2-large (774M)": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2-xl (1558M)": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}


def canonical_gpt2_name(name: str) -> str:
    """Accept `gpt2-medium`, `355M`, `gpt2-medium (355M)` or `gpt2` and return the key of
    `model_configs` it names."""
    wanted = name.strip().lower()
    if wanted == "gpt2":
        wanted = "gpt2-small"
    for key in model_configs:
        short, size = key.split(" ")
        if wanted in (key.lower(), short, size.strip("()").lower()):
            return key
    choices = ", ".join(k.split(" ")[0] for k in model_configs)
    raise ValueError(f"unknown GPT-2 size {name!r}; choose one of {choices} (or 124M/355M/774M/1558M)")


def gpt2_config(name: str) -> dict:
    """The full config dict of a GPT-2 size, as in the course: `{**BASE_CONFIG, **model_configs[name]}`."""
    return {**BASE_CONFIG, **model_configs[canonical_gpt2_name(name)]}


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: a CUDA GPU, else Apple's MPS, else the CPU; any other name as given."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class KVCache:
    """Keys and values of the positions seen so far, one (k, v) pair per layer.

    Tensors are (batch, heads, time, head_dim); `update` appends the new positions and returns
    everything the layer may attend to."""

    def __init__(self, n_layers: int):
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers

    def __len__(self) -> int:
        first = self.layers[0]
        return 0 if first is None else first[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        past = self.layers[layer]
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        self.layers[layer] = (k, v)
        return k, v

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on: the draft tokens a speculative pass rejected."""
        self.layers = [None if kv is None else (kv[0][:, :, :length], kv[1][:, :, :length])
                       for kv in self.layers]

    def select(self, rows: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> None:
        """Keep the batch rows `rows` (rows finished early leave the batch), then in each row the
        positions `positions` (rows, t), in that order (rejected positions squeezed out)."""
        def take(x: torch.Tensor) -> torch.Tensor:
            if rows is not None:
                x = x[rows]
            if positions is not None:
                index = positions[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3])
                x = x.gather(2, index)
            return x

        self.layers = [None if kv is None else (take(kv[0]), take(kv[1])) for kv in self.layers]


def attention_mask_for(attention_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """Boolean (batch, 1, q_len, k_len) mask: causal, and blind to padded keys.

    `attention_mask` is (batch, k_len) with 1 for real tokens and 0 for (left) padding; the
    last `q_len` keys are the queries. Each query may always see itself, so that a padded
    query never has an empty row (which would give NaN)."""
    k_len = attention_mask.shape[1]
    device = attention_mask.device
    causal = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len)
    mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
    itself = torch.arange(q_len, device=device)
    mask[:, :, itself, itself + k_len - q_len] = True
    return mask


def positions_for(attention_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """Position ids of the last `q_len` tokens, counted from each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q_len:]


def select_positions(x: torch.Tensor, only_last: bool, logits_at: torch.Tensor | None) -> torch.Tensor:
    """The hidden states the output head needs: all, the last one, or the `logits_at` ones."""
    if only_last and logits_at is not None:
        raise ValueError("forward takes only_last or logits_at, not both")
    if only_last:
        return x[:, -1:]
    return x if logits_at is None else x[logits_at]


def positions_and_mask(in_idx: torch.Tensor, cache: KVCache | None, attention_mask: torch.Tensor | None,
                       context_length: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Position ids of the new tokens, and the attention mask they need: None when plain
    causal attention from position 0 (or one new token seeing the whole cache) is right."""
    b, t = in_idx.shape
    past = len(cache) if cache is not None else 0
    if past + t > context_length:
        raise ValueError(f"sequence of {past + t} tokens exceeds the context of {context_length}")
    if attention_mask is not None:
        return positions_for(attention_mask, t), attention_mask_for(attention_mask, t)
    pos = torch.arange(past, past + t, device=in_idx.device).expand(b, t)
    if past == 0 or t == 1:
        return pos, None
    return pos, attention_mask_for(torch.ones(b, past + t, dtype=torch.bool, device=in_idx.device), t)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int,
                 qkv_bias: bool = False):
        super().__init__()
        assert d_out % num_heads == 0, "d_out must be divisible by num_heads"
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.W_query(x)), heads(self.W_key(x)), heads(self.W_value(x))
        if cache is not None:
            k, v = cache.update(layer, k, v)
        # Without an explicit mask the queries start at position 0 (plain causal attention) or
        # are a single new token that may see the whole cache.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and t > 1,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(y.transpose(1, 2).reshape(b, t, self.d_out))


class LayerNorm(nn.Module):
    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)


class GELU(nn.Module):
    """GPT-2's tanh approximation of GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            GELU(),
            nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg["emb_dim"], d_out=cfg["emb_dim"], context_length=cfg["context_length"],
            num_heads=cfg["n_heads"], dropout=cfg["drop_rate"], qkv_bias=cfg["qkv_bias"],
        )
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), cache, layer, mask))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class CausalLM(nn.Module):
    """What every model family of the package shares (`GPTModel`, `LlamaModel`): a `cfg` dict,
    GPT-2's initialisation, the context length and a KV cache sized for its `trf_blocks`."""

    supports_logits_at = True  # forward(..., logits_at=mask): the loss skips prompt logits

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def context_length(self) -> int:
        return self.cfg["context_length"]

    def new_cache(self) -> KVCache:
        return KVCache(len(self.trf_blocks))


class GPTModel(CausalLM):
    family = "gpt2"

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg["n_layers"]))
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        self.out_head.weight = self.tok_emb.weight  # tied, as in OpenAI's GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith(("out_proj.weight", "layers.2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * cfg["n_layers"]) ** 0.5)

    def forward(self, in_idx: torch.Tensor, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None, only_last: bool = False,
                logits_at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, time, vocab) for `in_idx` (batch, time).

        `cache` makes this call continue from the positions it holds; `attention_mask`
        (batch, past + time, 1 = token, 0 = left padding) covers the cached positions too.
        `only_last` returns the logits of the last position only, all generation needs;
        `logits_at` (batch, time, bool) returns (n, vocab) for the chosen positions only: the
        output head is a fifth of a small model's compute, and training needs no prompt logits."""
        pos, mask = positions_and_mask(in_idx, cache, attention_mask, self.context_length)

        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(pos))
        for i, block in enumerate(self.trf_blocks):
            x = block(x, cache, i, mask)
        return self.out_head(self.final_norm(select_positions(x, only_last, logits_at)))
