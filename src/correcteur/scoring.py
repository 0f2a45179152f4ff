"""How likely a model finds a text: the judge behind the guard and the chooser.

A corrector that picks among candidate sentences asks one question many times: which of these
continuations of the same prompt does the model prefer? The prompt is the same for all of them,
so it is run once and its keys and values are shared by every row of the batch.
"""

from __future__ import annotations

import copy
import inspect
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
    difference the two texts are alike again. So the source is read once, with its keys and
    values kept, and each candidate only from its first difference to `window` tokens past its
    last one (None: to the end, exact), attending to the source's cache before it. Its score is
    that window's log-probability minus the source's over the same stretch (the source scores 0).
    Reading a few tokens a candidate instead of the whole sentence is what makes weighing forty
    candidates fast on a CPU; only those windows go through the output layer (262k words wide
    for Gemma, more work than the whole network below it).

    With a `preamble`, every text is read after it (the same words before the source and before
    each candidate): what the model expects to follow "a text proofread, without a mistake" is
    closer to correct French than what it expects of any text."""

    def __init__(self, model: torch.nn.Module, tokenizer, name: str = "hf", window: int | None = 4,
                 preamble: str = ""):
        self.model, self.tokenizer, self.name, self.window = model, tokenizer, name, window
        self.preamble = preamble
        # transformers 5.2x renamed `past_key_values` to `cache` (the old name warns, then goes)
        accepted = inspect.signature(model.model.forward).parameters
        self._cache_argument = "cache" if "cache" in accepted else "past_key_values"
        self._source: tuple[str, tuple] | None = None

    @torch.no_grad()
    def __call__(self, source: str, texts: list[str]) -> list[float]:
        first, cache, source_log_probs, source_tokens = self._read_source(self.preamble + source)
        rows = [[self.tokenizer.bos_token_id, *self.tokenizer.encode(self.preamble + t, add_special_tokens=False)]
                for t in texts]
        spans = [changed_span(first, row, self.window) for row in rows]
        # a window's first token is predicted from the source's prefix, the others from the
        # candidate's own tokens before them, read after the source's cache
        windows = [row[start:end] for row, (_, (start, end)) in zip(rows, spans, strict=True)]
        scores = [source_log_probs[start - 1, window[0]].item() if window else 0.0
                  for window, (_, (start, _)) in zip(windows, spans, strict=True)]
        later = [r for r, window in enumerate(windows) if len(window) > 1]
        width = max((len(windows[r]) - 1 for r in later), default=0)
        sliding = getattr(self.model.config, "sliding_window", None)
        if not later:
            sums = []
        elif sliding is None or len(first) + width <= sliding:  # every row at once, the source's cache shared
            cache = copy.deepcopy(cache)  # kept for the source's next call
            cache.batch_repeat_interleave(len(later))
            sums = self._window_sums(cache, [windows[r] for r in later], [spans[r][1][0] for r in later])
        else:  # a sliding window's cache keeps only its last tokens: such long rows are read whole
            sums = [self._row_window_sum(rows[r], *spans[r][1]) for r in later]
        for r, value in zip(later, sums, strict=True):
            scores[r] += value
        return [score - sum(source_tokens[start - 1:end - 1])
                for score, ((start, end), _) in zip(scores, spans, strict=True)]

    def _read_source(self, source: str) -> tuple[list[int], object, torch.Tensor, list[float]]:
        """The source's tokens, cache, log-probabilities at every position and of its own tokens:
        the chooser asks again about the same source after each edit it takes, so the last
        source's reading is kept."""
        if self._source is None or self._source[0] != source:
            first = [self.tokenizer.bos_token_id, *self.tokenizer.encode(source, add_special_tokens=False)]
            read = self.model.model(input_ids=torch.tensor([first]), use_cache=True)
            log_probs = self._log_probs(read.last_hidden_state[0])
            own = log_probs[:-1].gather(1, torch.tensor(first[1:])[:, None])[:, 0].tolist()
            self._source = (source, (first, getattr(read, self._cache_argument), log_probs, own))
        return self._source[1]

    def _log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """log p of every word of the vocabulary after each hidden state (its output layer)."""
        return torch.log_softmax(self.model.lm_head(hidden).float(), dim=-1)

    def _row_window_sum(self, row: list[int], start: int, end: int) -> float:
        hidden = self.model.model(input_ids=torch.tensor([row[:end - 1]])).last_hidden_state[0, start:]
        return self._log_probs(hidden).gather(1, torch.tensor(row[start + 1:end])[:, None]).sum().item()

    def _window_sums(self, cache, windows: list[list[int]], starts: list[int]) -> list[float]:
        """log p of each window's tokens after its first, each row reading its window after the
        cached source (one row of `cache` a window), masked from the window's start on."""
        width = max(map(len, windows)) - 1
        ids = torch.tensor([w[:-1] + [0] * (width + 1 - len(w)) for w in windows])
        begin = torch.tensor(starts)[:, None]
        filled = torch.arange(width)[None, :] < torch.tensor([len(w) - 1 for w in windows])[:, None]
        before = torch.arange(cache.get_seq_length())[None, :] < begin
        hidden = self.model.model(input_ids=ids, **{self._cache_argument: cache}, position_ids=begin + torch.arange(width),
                                  attention_mask=torch.cat([before, filled], dim=1).long()).last_hidden_state
        at = filled.nonzero()
        targets = torch.tensor([windows[i][j + 1] for i, j in at.tolist()])
        token_log_probs = self._log_probs(hidden[at[:, 0], at[:, 1]]).gather(1, targets[:, None])[:, 0]
        sums = [0.0] * len(windows)
        for (i, _), value in zip(at.tolist(), token_log_probs.tolist(), strict=True):
            sums[i] += value
        return sums


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
