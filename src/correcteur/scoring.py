"""How likely a model finds a text: the judge behind the guard and the chooser.

A corrector that picks among candidate sentences asks one question many times: which of these
continuations of the same prompt does the model prefer? The prompt is the same for all of them,
so it is run once and its keys and values are shared by every row of the batch.
"""

from __future__ import annotations

from typing import Protocol

import torch

from correcteur.prompt import correction_prompt


@torch.no_grad()
def continuation_log_probs(model: torch.nn.Module, prefix: list[int],
                           continuations: list[list[int]]) -> list[float]:
    """log p(continuation | prefix) for each continuation (token ids), summed over its tokens.

    The prefix is run once with the KV cache, and the cache is shared by every row (right
    padding cannot change the scores of the tokens before it). When the longest row overflows
    the context, the prefix loses its first tokens."""
    if not prefix or not all(continuations):
        raise ValueError("scoring needs a prefix and non-empty continuations")
    device = next(model.parameters()).device
    width = max(map(len, continuations))
    prefix = prefix[max(0, len(prefix) + width - model.context_length):]
    if len(prefix) == 0:
        raise ValueError(f"a continuation of {width} tokens leaves no room for its prompt in a context "
                         f"of {model.context_length} tokens")
    cache = model.new_cache()
    first = model(torch.tensor([prefix], device=device), cache=cache, only_last=True)[0, -1].float()
    first = torch.log_softmax(first, dim=-1)
    totals = [first[c[0]].item() for c in continuations]
    if width == 1:
        return totals
    rows = len(continuations)
    cache.layers = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in cache.layers]
    ids = torch.tensor([c + [0] * (width - len(c)) for c in continuations], device=device)
    scored = torch.zeros(rows, width - 1, dtype=torch.bool, device=device)
    for row, c in enumerate(continuations):
        scored[row, :len(c) - 1] = True
    logits = model(ids[:, :-1], cache=cache, logits_at=scored).float()
    token_log_probs = torch.log_softmax(logits, dim=-1).gather(1, ids[:, 1:][scored][:, None])[:, 0]
    rest = token_log_probs.split([len(c) - 1 for c in continuations])
    return [total + part.sum().item() for total, part in zip(totals, rest, strict=True)]


class Scorer(Protocol):
    """`scorer(source, texts) -> scores`: higher is likelier; only differences matter."""

    name: str

    def __call__(self, source: str, texts: list[str]) -> list[float]: ...


class ResponseScorer:
    """log p(text, end-of-text | correction prompt for `source`): the fine-tuned corrector's
    judgement of each text as the correction of `source`."""

    def __init__(self, model: torch.nn.Module, tokenizer, prompt_style: str = "alpaca",
                 input_prefix: str = "", name: str = "model"):
        self.model, self.tokenizer, self.prompt_style = model, tokenizer, prompt_style
        self.input_prefix, self.name = input_prefix, name

    def __call__(self, source: str, texts: list[str]) -> list[float]:
        prompt = correction_prompt(source, self.prompt_style, self.input_prefix)
        eot = self.tokenizer.eot_token
        return continuation_log_probs(self.model, self.tokenizer.encode(prompt, allowed_special=set()),
                                      [self.tokenizer.encode(t, allowed_special=set()) + [eot] for t in texts])


class SentenceScorer:
    """log p(text) after a start token, whatever the source: a pretrained model's judgement of
    French, no prompt (a base model was never taught one)."""

    def __init__(self, model: torch.nn.Module, tokenizer, start_id: int, end_id: int | None = None,
                 name: str = "base"):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.start_id, self.end = start_id, [] if end_id is None else [end_id]

    def __call__(self, source: str, texts: list[str]) -> list[float]:
        return continuation_log_probs(self.model, [self.start_id],
                                      [self.tokenizer.encode(t, allowed_special=set()) + self.end for t in texts])


class HFSentenceScorer:
    """`SentenceScorer` for a Hugging Face causal LM (gemma-3-270m, whose architecture the
    package does not reimplement), scored relative to `source`.

    A candidate differs from its source in a few tokens: those before the first difference
    have the same probabilities in both and cancel out, and from a few tokens after the last
    difference the two texts are alike again. Only that window goes through the output layer
    (262k words wide for Gemma, more work than the whole network below it): each text's score
    is its window's log-probability minus the source's over the same stretch, so the source
    scores 0. `window` tokens past the last difference are counted (None: to the end, exact)."""

    def __init__(self, model: torch.nn.Module, tokenizer, name: str = "hf", window: int | None = 4):
        self.model, self.tokenizer, self.name, self.window = model, tokenizer, name, window

    @torch.no_grad()
    def __call__(self, source: str, texts: list[str]) -> list[float]:
        encode = self.tokenizer.encode
        rows = [[self.tokenizer.bos_token_id, *encode(t, add_special_tokens=False)] for t in [source, *texts]]
        spans = [changed_span(rows[0], row, self.window) for row in rows]
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        hidden = self.model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        # the source is read whole; each other row only in its window
        wanted = [(0, j) for j in range(1, len(rows[0]))]
        wanted += [(r, j) for r in range(1, len(rows)) for j in range(*spans[r][1])]
        at = torch.tensor(wanted, dtype=torch.long).reshape(-1, 2)
        logits = self.model.lm_head(hidden[at[:, 0], at[:, 1] - 1]).float()
        token = ids[at[:, 0], at[:, 1]]
        log_probs = torch.log_softmax(logits, dim=-1).gather(1, token[:, None])[:, 0].tolist()
        source_tokens = log_probs[:len(rows[0]) - 1]  # log p of source token j at index j - 1
        scores, cursor = [], len(source_tokens)
        for r in range(1, len(rows)):
            (start, end), (row_start, row_end) = spans[r]
            n = row_end - row_start
            scores.append(sum(log_probs[cursor:cursor + n]) - sum(source_tokens[start - 1:end - 1]))
            cursor += n
        return scores


def changed_span(source: list[int], row: list[int], window: int | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """The stretch of tokens to score in `source` and in `row`: from their first difference to
    `window` tokens past their last one (to the end with None), as (start, end) in each."""
    shortest = min(len(source), len(row))
    first = next((i for i in range(shortest) if source[i] != row[i]), shortest)
    same_end = 0
    while same_end < shortest - first and source[-1 - same_end] == row[-1 - same_end]:
        same_end += 1
    extra = same_end if window is None else min(window, same_end)
    return ((first, len(source) - same_end + extra), (first, len(row) - same_end + extra))
