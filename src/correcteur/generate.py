"""Text generation: the course's `generate`, with a KV cache, batches and per-row stopping.

Works with any model of the package (`GPTModel`, `LlamaModel`): they share the forward
signature `model(idx, cache=None, attention_mask=None, only_last=False)` and `new_cache()`.
"""

from __future__ import annotations

from collections.abc import Collection

import torch


def text_to_token_ids(text: str, tokenizer) -> torch.Tensor:
    """(1, n) tensor of token ids, as in the course; `<|endoftext|>` is read as the special token."""
    encoded = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    return torch.tensor(encoded).unsqueeze(0)


def token_ids_to_text(token_ids: torch.Tensor, tokenizer) -> str:
    return tokenizer.decode(token_ids.squeeze(0).tolist())


def next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token of each row from (batch, vocab) logits: greedy at temperature 0,
    else sampled from the top-k softmax."""
    if top_k is not None:
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if temperature > 0.0:
        probs = torch.softmax(logits / temperature, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator)
    return logits.argmax(dim=-1, keepdim=True)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, context_size: int,
             temperature: float = 0.0, top_k: int | None = None, eos_id: int | None = None,
             attention_mask: torch.Tensor | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None, stop_ids: Collection[int] = ()) -> torch.Tensor:
    """Append up to `max_new_tokens` tokens to each row of `idx` (batch, time).

    As in the course, the end-of-text token itself is not appended and generation stops once
    every row has produced it; rows that finished earlier are filled with `eos_id`. `stop_ids`
    end a row the same way (a chat model's other special tokens, such as <|im_end|>).
    Left-padded batches pass `attention_mask` (1 = token, 0 = padding). The model reads the
    prompt cropped from the left so that prompt and new tokens fit in `context_size` (the same
    window with and without the cache); the whole prompt is returned, as in the course."""
    if max_new_tokens >= context_size:
        use_cache = False  # no room for any prompt in a cache: slide the window, as the course does
    keep = max(1, context_size - max_new_tokens)
    prompt, idx = idx, idx[:, -keep:]
    if attention_mask is not None:
        attention_mask = attention_mask[:, -keep:].to(idx.device)
    cache = model.new_cache() if use_cache else None
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    fill = eos_id if eos_id is not None else 0
    stops = torch.tensor(sorted({eos_id, *stop_ids}), device=idx.device) if eos_id is not None else None
    new_tokens = []
    step_input = idx
    for _ in range(max_new_tokens):
        if use_cache:
            logits = model(step_input, cache=cache, attention_mask=attention_mask, only_last=True)
        else:
            context = torch.cat([idx, *new_tokens], dim=1)[:, -context_size:]
            mask = None if attention_mask is None else attention_mask[:, -context.shape[1]:]
            logits = model(context, attention_mask=mask, only_last=True)
        token = next_token(logits[:, -1], temperature, top_k, generator)
        if eos_id is not None:
            finished |= torch.isin(token.squeeze(1), stops)
            if bool(finished.all()):
                break
            token = token.masked_fill(finished[:, None], fill)
        new_tokens.append(token)
        step_input = token
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, torch.ones_like(token, dtype=attention_mask.dtype)], dim=1)
    return torch.cat([prompt, *new_tokens], dim=1)


def left_pad(sequences: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists into a left-padded (batch, time) tensor and its attention mask."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)
