"""The corrector people use: a checkpoint, its prompt and guarded greedy generation.

`Corrector` is the only thing the app and the `correct` command know of the model. Text of
any length is cut into sentences (and lines), a sentence too long for the model's context
after its commas, semicolons and colons (or, failing that, between words), the pieces are
corrected in left-padded batches with the KV cache (speculative decoding by default: greedy's
tokens in fewer passes, drafted from the text itself), and the result is put back together with
the original spaces and line breaks, so a corrector never reflows someone's text.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from correcteur.checkpoint import load_for_inference
from correcteur.choose import SOURCE_NAMES, Choice, Chooser, load_chooser_config, make_scorer
from correcteur.edits import Edit, Span, apply, edits_between
from correcteur.errors import UserError
from correcteur.generate import (
    DecodingStats,
    can_verify_drafts,
    generate,
    generate_speculative,
    left_pad,
)
from correcteur.guard import guard_for_checkpoint
from correcteur.mask import covered, merged, protect_parts, protected_spans, within
from correcteur.model import pick_device
from correcteur.precision import with_precision
from correcteur.prompt import correction_prompt, extract_response
from correcteur.textdiff import GuardFn, Part, join_parts

# A period after these words (or after a single capital, as in "J. Dupont") does not end a sentence.
ABBREVIATIONS = {
    "m", "mm", "mme", "mmes", "mlle", "mlles", "me", "mgr", "dr", "pr", "st", "ste",
    "cf", "ex", "p", "pp", "av", "bd", "n", "no", "art", "chap", "fig", "vol",
}
WHITESPACE = re.compile(r"\s+")
SENTENCE_END = re.compile(r"[.!?…]+[»”\"')\]]*$")
WORD_BEFORE_PERIOD = re.compile(r"(?<![\w.])(\w+)\.$")
CLAUSE_BREAK = re.compile(r"(?<=[,;:])\s+")
DECODINGS = ("speculative", "greedy")  # the same tokens; speculative takes fewer forward passes


def split_sentences(text: str) -> list[tuple[str, str]]:
    """Cut `text` into (piece, separator) pairs with `''.join(p + s for p, s in pairs) == text`.

    Every whitespace run that holds a line break, follows the end of a sentence, or opens or
    closes the text becomes a separator; the pieces themselves never start or end with
    whitespace, so the model sees clean sentences and the separators go back untouched."""
    pieces = []
    start = 0
    for space in WHITESPACE.finditer(text):
        before = text[start:space.start()]
        at_edge = space.start() == 0 or space.end() == len(text)
        if at_edge or "\n" in space.group() or "\r" in space.group() or _ends_sentence(before):
            pieces.append((before, space.group()))
            start = space.end()
    if start < len(text) or not pieces:
        pieces.append((text[start:], ""))
    return pieces


def _ends_sentence(chunk: str) -> bool:
    if not SENTENCE_END.search(chunk):
        return False
    word = WORD_BEFORE_PERIOD.search(chunk)
    if word is None:
        return True
    word = word.group(1)
    return word.lower() not in ABBREVIATIONS and not (len(word) == 1 and word.isupper())


def explained(edit: Edit, chosen: list[Choice]) -> Edit:
    """`edit` with the source and margin of the chooser's choice it comes from (the choice
    whose span meets it), named in French as the editors show it."""
    for choice in chosen:
        c = choice.candidate
        if c.start < edit.end and edit.offset < c.end or c.start == edit.offset:
            return dataclasses.replace(edit, source=SOURCE_NAMES[c.source], confidence=round(choice.margin, 3))
    return edit


@dataclass
class Piece:
    """One text to correct, encoded as its prompt, with its own budget of new tokens."""

    source: str
    prompt: str
    prompt_ids: list[int]
    max_new_tokens: int
    source_ids: list[int]  # the text alone: the draft of speculative decoding


class Corrector:
    """Correct French text with an instruction-tuned model, one sentence at a time."""

    def __init__(self, model: torch.nn.Module, tokenizer, prompt_style: str = "alpaca",
                 device: str | torch.device | None = None, max_new_tokens_factor: float = 1.5,
                 guard: GuardFn | None = None, name: str = "model", batch_size: int = 8,
                 use_cache: bool = True, input_prefix: str = "", decoding: str = "speculative"):
        if decoding not in DECODINGS:
            raise UserError(f"unknown decoding {decoding!r}; choose one of {', '.join(DECODINGS)}")
        self.device = pick_device(str(device or "auto"))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.prompt_style = prompt_style
        self.max_new_tokens_factor = max_new_tokens_factor
        self.guard = guard
        self.name = name
        self.batch_size = batch_size
        self.use_cache = use_cache
        self.meta: dict = {}  # what the checkpoint says of itself, when loaded from one
        self.input_prefix = input_prefix  # the dataset's prefix, put before each text in the prompt
        self.dictionary: frozenset[str] = frozenset()  # the user's words, never edited (`mask`)
        # Rules and lexicon propose, the model disposes (`choose.py`); None: the model's own
        # answers, guarded (the generative corrector)
        self.chooser: Chooser | None = None
        self.decoding = decoding
        self.stats = DecodingStats()  # tokens and forward passes of every row generated
        self.precision = "float32"

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None,
                        guard: bool = True, batch_size: int = 8, decoding: str = "speculative",
                        precision: str = "float32", chooser: bool = True) -> Corrector:
        """Load a training run's checkpoint (its directory or a `.pt` file) for correcting: with
        the chooser tuned for it (`choose.json` beside it) unless `chooser` is False, else the
        model's own answers guarded with the thresholds tuned for it (`guard.json`) unless
        `guard` is False. `precision` (float32, bfloat16, int8: `precision.with_precision`)
        serves model and guard."""
        path = Path(path)
        if not path.exists():
            raise UserError(
                f"no checkpoint at {path}: train one with `python -m correcteur train`, then pass "
                "its folder (checkpoints/<run>/) or its best.pt with --checkpoint"
            )
        if precision == "int8" and pick_device(str(device or "auto")).type != "cpu":
            raise UserError("--precision int8 runs on the CPU only: add --device cpu, or choose bfloat16")
        model, tokenizer, meta = load_for_inference(path)
        model = with_precision(model, precision)
        style = meta.get("prompt_style", "alpaca")
        prefix = meta.get("input_prefix", "")
        checker = guard_for_checkpoint(model, tokenizer, style, path, prefix) if guard else None
        corrector = cls(model, tokenizer, prompt_style=style, device=device, guard=checker,
                        name=meta.get("model_name", path.name), batch_size=batch_size, input_prefix=prefix,
                        decoding=decoding)
        corrector.meta = meta
        corrector.precision = precision
        config = load_chooser_config(path) if chooser else None
        if config is not None:
            corrector.chooser = Chooser(make_scorer(config.scorer, corrector.model, tokenizer, meta), config)
        return corrector

    @property
    def description(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        lean = "" if self.precision == "float32" else f" · {self.precision}"
        return f"{self.name} · {n_params / 1e6:.1f} M paramètres · {self.device.type}{lean}"

    def correct(self, text: str, progress: bool = False, protected: Sequence[Span] = (),
                on_progress: Callable[[int, int], None] | None = None) -> str:
        """Correct text of any length; spaces, blank lines and line endings come back as they were,
        and so do URLs, e-mails, code, numbers, dictionary words and the `protected` spans.
        `on_progress(done, total)` hears of every batch of sentences corrected (the app's status)."""
        _, pairs, _, corrected = self._corrections(text, protected, progress, on_progress)
        return "".join(piece + separator for piece, (_, separator) in zip(corrected, pairs, strict=True))

    def suggest(self, text: str, protected: Sequence[Span] = ()) -> list[Edit]:
        """`correct(text)` as edits of `text`: applying them all gives exactly `correct(text)`.
        Each carries the guard's margin for it alone (None without a guard)."""
        starts, pairs, spans, corrected = self._corrections(text, protected, False)
        edits = []
        for start, (piece, _), local, fixed in zip(starts, pairs, spans, corrected, strict=True):
            found = edits_between(piece, fixed, local)
            chosen = self.chooser.recent.get(piece) if self.chooser else None
            if chosen is not None:  # who proposed each edit, and the margin it won by
                found = [explained(edit, chosen) for edit in found]
                margins = [edit.confidence for edit in found]
            else:
                margins = self._margins(piece, found)
            for edit, margin in zip(found, margins, strict=True):
                edits.append(dataclasses.replace(edit, offset=start + edit.offset, confidence=margin))
        return edits

    def _corrections(self, text: str, protected: Sequence[Span], progress: bool,
                     on_progress: Callable[[int, int], None] | None = None):
        """The pieces of `text` (where each starts, piece and separator, its protected spans)
        and their corrections."""
        pairs = split_sentences(text)
        spans = merged([*protected_spans(text, self.dictionary), *protected])
        starts = list(itertools.accumulate((len(p) + len(s) for p, s in pairs), initial=0))[:-1]
        local = [within(spans, start, start + len(piece)) for start, (piece, _) in zip(starts, pairs, strict=True)]
        corrected = self._correct_protected([piece for piece, _ in pairs], local, progress, on_progress)
        return starts, pairs, local, corrected

    def _margins(self, piece: str, edits: list[Edit]) -> list[float | None]:
        """log p(piece with the edit alone) - log p(piece) under the guard's model, for each edit:
        the margin the guard weighs. None without a scoring guard, or for a piece cut to fit."""
        score = getattr(self.guard, "log_probs", None)
        if not edits or score is None or not self._fits(piece):
            return [None] * len(edits)
        base, *scores = score(piece, [piece, *(apply(piece, [edit]) for edit in edits)])
        return [round(value - base, 3) for value in scores]

    def correct_batch(self, texts: list[str], progress: bool = False,
                      on_progress: Callable[[int, int], None] | None = None) -> list[str]:
        """One corrected string per text (a sentence, usually), in order; blank texts come back
        untouched, and a text too long for the context is corrected, and guarded, in parts."""
        return self._correct_protected(texts, [protected_spans(t, self.dictionary) for t in texts], progress,
                                       on_progress)

    def _correct_protected(self, texts: list[str], spans: list[list[Span]], progress: bool,
                           on_progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Texts made only of protected spans (a line of code) are not asked; in the others,
        the model's edits that touch a protected span are undone before the guard judges.
        `on_progress` hears of each batch generated, or, with a chooser, of each text chosen."""
        asked = [i for i, (text, local) in enumerate(zip(texts, spans, strict=True)) if not covered(text, local)]
        results = list(texts)
        proposed = self.proposed_parts([texts[i] for i in asked], progress, None if self.chooser else on_progress)
        for done, (i, parts) in enumerate(zip(asked, proposed, strict=True), start=1):
            results[i] = join_parts(protect_parts(parts, spans[i]), self.decide)
            if on_progress is not None and self.chooser is not None:
                on_progress(done, len(asked))
        return results

    def proposed_parts(self, texts: list[str], progress: bool = False,
                       on_progress: Callable[[int, int], None] | None = None) -> list[list[Part]]:
        """`answer_parts`, or, for a chooser that weighs no edit of the model's, the parts with no
        answer (nothing generated: the chooser's candidates come from rules and lexicons)."""
        if self.chooser is None or self.chooser.uses_model:
            return self.answer_parts(texts, progress, on_progress)
        return [[(part, part, gap) for part, gap in self._fit(text, "")] for text in texts]

    def decide(self, part: str, answer: str) -> str:
        """What becomes of a part and the model's answer to it: the chooser's choice (the answer
        one candidate among others, protected text never touched), or the guarded answer."""
        if self.chooser is not None:
            return self.chooser(part, answer, protected_spans(part, self.dictionary))
        return self.guard(part, answer) if self.guard else answer

    def answer_parts(self, texts: list[str], progress: bool = False,
                     on_progress: Callable[[int, int], None] | None = None) -> list[list[Part]]:
        """The model's unguarded answers: for each text, (part, answer, gap after it) for each
        part the context can hold, one part unless the text had to be cut (`_fit`)."""
        cuts = [self._fit(text, "") for text in texts]
        answers = iter(self._answer_pieces([part for pairs in cuts for part, _ in pairs], progress, on_progress))
        return [[(part, next(answers), gap) for part, gap in pairs] for pairs in cuts]

    def _answer_pieces(self, texts: list[str], progress: bool,
                       on_progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Every text is checked against the context before any is generated, so a text that
        cannot fit fails at once instead of after minutes of work."""
        todo = [i for i, text in enumerate(texts) if text.strip()]
        pieces = [self._encode(texts[i]) for i in todo]
        results = list(texts)
        batches = range(0, len(todo), self.batch_size)
        # disable=None lets tqdm hide the bar when stderr is not a terminal
        for start in tqdm(batches, desc="correcting", unit="batch", disable=None if progress else True):
            batch, indices = pieces[start:start + self.batch_size], todo[start:start + self.batch_size]
            for index, answer in zip(indices, self._generate(batch), strict=True):
                results[index] = answer
            if on_progress is not None:
                on_progress(min(start + self.batch_size, len(todo)), len(todo))
        return results

    def _fit(self, piece: str, separator: str,
             breaks: tuple[re.Pattern, ...] = (CLAUSE_BREAK, WHITESPACE)) -> list[tuple[str, str]]:
        """`piece` as (part, separator) pairs that each fit the context: whole when it fits, else
        cut at the first kind of break, parts joined again as long as they fit. A word longer
        than the context stays as it is, for `_encode` to refuse with its reason."""
        if not breaks or self._fits(piece):
            return [(piece, separator)]
        parts: list[tuple[str, str]] = []
        start = 0
        for cut in [*breaks[0].finditer(piece), None]:
            chunk, gap = (piece[start:cut.start()], cut.group()) if cut else (piece[start:], separator)
            start = cut.end() if cut else start
            joined = parts[-1][0] + parts[-1][1] + chunk if parts else ""
            if parts and self._fits(joined):
                parts[-1] = (joined, gap)
            else:
                parts.extend(self._fit(chunk, gap, breaks[1:]))
        return parts

    def _fits(self, text: str) -> bool:
        try:
            self._encode(text)
        except UserError:
            return False
        return True

    def _encode(self, text: str) -> Piece:
        try:
            source_ids = self.tokenizer.encode(text, allowed_special=set())
        except ValueError as error:  # tiktoken refuses special tokens such as <|endoftext|> in text
            raise UserError(f"the text holds a token the model reserves for itself "
                            f"({str(error).splitlines()[0]}): remove it and try again") from None
        n_input = len(source_ids)
        max_new_tokens = int(self.max_new_tokens_factor * n_input) + 8
        prompt = correction_prompt(text, self.prompt_style, self.input_prefix)
        prompt_ids = self.tokenizer.encode(prompt, allowed_special=set())
        context = self.model.context_length
        if len(prompt_ids) + max_new_tokens > context:
            raise UserError(
                f"a word of {n_input} tokens, {text[:60]!r}{'...' if len(text) > 60 else ''}, is too long for {self.name}, whose "
                f"context of {context} tokens must hold the prompt ({len(prompt_ids)} tokens) and "
                f"up to {max_new_tokens} new ones; longer sentences are cut at commas and spaces, "
                f"a single word cannot be: break it up"
            )
        return Piece(text, prompt, prompt_ids, max_new_tokens, source_ids)

    def _generate(self, pieces: list[Piece]) -> list[str]:
        """Greedy answers for a batch; each row is cut at end-of-text and at its own budget.
        Speculative decoding drafts each answer from its text; a model that cannot verify
        drafts (a test double with a bare forward) is decoded one token per pass."""
        eot = self.tokenizer.eot_token
        # A chat model may end with another of its special tokens (<|im_end|>): `generate` ends
        # the row there as at end-of-text, filling it with end-of-text.
        stops = getattr(self.tokenizer, "special_ids", {eot})
        ids, mask = left_pad([p.prompt_ids for p in pieces], pad_id=eot, device=self.device)
        width = ids.shape[1]
        # Rows of a batch share one loop; capping it keeps every prompt whole (no left crop).
        max_new_tokens = min(max(p.max_new_tokens for p in pieces), self.model.context_length - width)
        options = {"max_new_tokens": max_new_tokens, "context_size": self.model.context_length,
                   "eos_id": eot, "attention_mask": mask, "use_cache": self.use_cache, "stop_ids": stops}
        if self.decoding == "speculative" and can_verify_drafts(self.model):
            out = generate_speculative(self.model, ids, sources=[p.source_ids for p in pieces],
                                       stats=self.stats, **options)
        else:
            out = generate(self.model, ids, **options)
        answers = []
        for piece, row in zip(pieces, out[:, width:].tolist(), strict=True):
            row = row[:piece.max_new_tokens]
            if eot in row:
                row = row[:row.index(eot)]
            generated = piece.prompt + self.tokenizer.decode(row)
            answers.append(extract_response(generated, self.prompt_style))
        return answers
