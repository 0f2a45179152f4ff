"""Text generation: the course's `generate`, with a KV cache, batches and per-row stopping, and
`generate_speculative`, the same greedy tokens in fewer forward passes for a corrector.

Works with any model of the package (`GPTModel`, `LlamaModel`): they share the forward
signature `model(idx, cache=None, attention_mask=None, only_last=False, logits_at=None)`,
`new_cache()` and the cache's `truncate` / `select`.

A corrector's answer is mostly a copy of its input, so `generate_speculative` guesses the next
tokens from the input (where the answer last re-aligned with it, the input's following tokens),
lets the model score that draft in one pass, keeps the longest prefix the model agrees with
plus the model's own next token, and rolls the cache back over the rest (Ge et al., 2022,
"Aggressive Decoding"; prompt lookup decoding). Every kept token is the model's greedy choice,
so the output is greedy decoding's, token for token.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

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


@dataclass
class DecodingStats:
    """What decoding did, one entry per generated row, appended call after call: the new
    tokens (a stop token included) and the forward passes the row took part in. Greedy
    decoding makes one token per pass; each accepted draft token adds one."""

    tokens: list[int] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)

    def tokens_per_pass(self, rows: slice | None = None) -> float:
        rows = rows or slice(None)
        return sum(self.tokens[rows]) / max(1, sum(self.passes[rows]))


def can_verify_drafts(model) -> bool:
    """Speculative decoding scores chosen positions (`logits_at`) and rolls the cache back: the
    package's models can; a model with a bare forward (a test double) is decoded greedily."""
    return bool(getattr(model, "supports_logits_at", False))


def draft_from(source: Sequence[int], output: Sequence[int], expected: int, n_draft: int,
               ngram: int = 3, guess: bool = True) -> tuple[list[int], int]:
    """The next `n_draft` tokens of `source` the output is likely to copy, and the source
    position they start from.

    The output re-aligns with the source after the longest n-gram (n <= `ngram`) ending the
    output that the source holds, at its occurrence nearest `expected` (where the output would
    be had it replaced one source token by each of its own since the last alignment); without
    any, at `expected`: a corrected word, whose next word is usually the source's next one.
    That guess is skipped (no draft) when `guess` is False."""
    for n in range(min(ngram, len(output)), 0, -1):
        tail = list(output[-n:])
        ends = [end for end in range(n, len(source) + 1) if list(source[end - n:end]) == tail]
        if ends:
            position = min(ends, key=lambda end: abs(end - expected))
            return list(source[position:position + n_draft]), position
    return (list(source[expected:expected + n_draft]) if guess else []), expected


def _scores(model, ids: torch.Tensor, cache, mask: torch.Tensor, last: int) -> torch.Tensor:
    """Logits (batch, last, vocab) of the last `last` positions of `ids`. An all-ones mask is
    dropped, so that an unpadded pass takes the model's plain causal path, as `generate` does."""
    mask_or_none = None if bool(mask.all()) else mask
    if last == 1:
        return model(ids, cache=cache, attention_mask=mask_or_none, only_last=True)
    chosen = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    chosen[:, -last:] = True
    return model(ids, cache=cache, attention_mask=mask_or_none, logits_at=chosen).view(ids.shape[0], last, -1)


@torch.no_grad()
def generate_speculative(model, idx: torch.Tensor, max_new_tokens: int, context_size: int,
                         sources: Sequence[Sequence[int]], eos_id: int | None = None,
                         attention_mask: torch.Tensor | None = None, use_cache: bool = True,
                         stop_ids: Collection[int] = (), n_draft: int = 10, ngram: int = 3,
                         stats: DecodingStats | None = None) -> torch.Tensor:
    """Greedy `generate` (same arguments, same result, token for token) in fewer passes: each
    pass scores the token last chosen and a draft of up to `n_draft` tokens of the row's
    `sources` entry (the text its answer should mostly copy, as token ids; see `draft_from`),
    shorter after a rejection.

    Rows advance at their own pace: the positions a row rejected, or that another row used,
    are kept as masked holes (left padding in the middle, which position ids skip) and
    squeezed out only when the context would overflow; finished rows leave the batch. A
    `max_new_tokens` of the whole context slides the window: `generate` does that, greedily."""
    if max_new_tokens < 1 or max_new_tokens >= context_size or not can_verify_drafts(model):
        return generate(model, idx, max_new_tokens, context_size, eos_id=eos_id,
                        attention_mask=attention_mask, use_cache=use_cache, stop_ids=stop_ids)
    if len(sources) != idx.shape[0]:
        raise ValueError(f"{len(sources)} sources for a batch of {idx.shape[0]} rows")
    device = idx.device
    keep = context_size - max_new_tokens
    prompt, idx = idx, idx[:, -keep:]
    mask = torch.ones_like(idx) if attention_mask is None else attention_mask[:, -keep:].to(device).long()
    stops = {eos_id, *stop_ids} if eos_id is not None else set()
    batch = idx.shape[0]
    outputs: list[list[int]] = [[] for _ in range(batch)]
    cursors, passes, made = [0] * batch, [0] * batch, [0] * batch
    reach = [n_draft] * batch  # each row's draft length: back to what it last accepted + 1 after a
    # rejection, doubled after a success
    missed = [False] * batch  # the row's last draft was rejected from its first token: it guesses no
    # more until an n-gram realigns it (a model that copies nothing then decodes as greedily, at its cost)
    # `seq`/`seq_mask`: every position fed so far (the cache holds exactly these); `pending`: each
    # row's last token, not yet fed. `active[i]` is the row of the prompt behind tensor row i.
    seq, seq_mask, pending = idx[:, :-1], mask[:, :-1], idx[:, -1:]
    cache = model.new_cache() if use_cache else None
    fed = 0
    active = list(range(batch))
    while active:
        drafts = []
        for r in active:
            room = min(reach[r], max_new_tokens - len(outputs[r]) - 1)  # the model adds a token too
            draft, cursors[r] = draft_from(sources[r], outputs[r], cursors[r], room, ngram, guess=not missed[r])
            drafts.append(draft)
        if seq.shape[1] + 1 + max(map(len, drafts)) > context_size:  # holes: squeeze them out
            width = int(seq_mask.sum(1).max())
            order = torch.sort(seq_mask, dim=1, stable=True).indices[:, seq.shape[1] - width:]
            seq, seq_mask = seq.gather(1, order), seq_mask.gather(1, order)
            if cache is not None:
                cache.select(positions=order)
                fed = width
        k = min(max(map(len, drafts)), context_size - seq.shape[1] - 1)
        lengths = torch.tensor([min(len(d), k) for d in drafts], device=device)
        draft_ids = torch.tensor([d[:k] + [0] * (k - len(d[:k])) for d in drafts], dtype=torch.long,
                                 device=device).view(len(active), k)
        step = torch.cat([pending, draft_ids], dim=1)
        full_mask = torch.cat([seq_mask, torch.ones_like(step)], dim=1)
        ids = torch.cat([seq[:, fed:], step], dim=1) if cache is not None else torch.cat([seq, step], dim=1)
        choice = _scores(model, ids, cache, full_mask, k + 1).argmax(dim=-1)
        agree = (draft_ids == choice[:, :k]) & (torch.arange(k, device=device) < lengths[:, None])
        accepted = agree.long().cumprod(dim=1).sum(dim=1)
        n_keep = int(accepted.max())
        kept_mask = (torch.arange(k, device=device) < accepted[:, None]).long()
        seq = torch.cat([seq, step], dim=1)[:, :seq.shape[1] + 1 + n_keep]
        seq_mask = torch.cat([seq_mask, torch.ones_like(pending), kept_mask], dim=1)[:, :seq.shape[1]]
        if cache is not None:
            cache.truncate(seq.shape[1])
            fed = seq.shape[1]
        pending = choice.gather(1, accepted[:, None])
        still = []
        for i, (r, a, row_choice) in enumerate(zip(active, accepted.tolist(), choice.tolist(), strict=True)):
            new = drafts[i][:a] + [row_choice[a]]
            stop = next((j for j, token in enumerate(new) if token in stops), None)
            passes[r] += 1
            cursors[r] += len(new)
            reach[r] = min(n_draft, 2 * reach[r]) if a == len(drafts[i]) else a + 1
            missed[r] = (missed[r] and not drafts[i]) or (a == 0 and bool(drafts[i]))
            made[r] += len(new) if stop is None else stop + 1
            outputs[r] += new if stop is None else new[:stop]
            if stop is None and len(outputs[r]) < max_new_tokens:
                still.append(i)
        if len(still) < len(active):
            rows = torch.tensor(still, dtype=torch.long, device=device)
            seq, seq_mask, pending = seq[rows], seq_mask[rows], pending[rows]
            if cache is not None:
                cache.select(rows=rows)
            active = [active[i] for i in still]
    if stats is not None:
        stats.tokens.extend(made)
        stats.passes.extend(passes)
    width = max(len(o) for o in outputs)
    fill = eos_id if eos_id is not None else 0
    new_ids = torch.tensor([o + [fill] * (width - len(o)) for o in outputs], dtype=prompt.dtype,
                           device=device).view(batch, width)
    return torch.cat([prompt, new_ids], dim=1)


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
