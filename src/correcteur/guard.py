"""Guarded correction: the project's answer to "never make text worse".

A small model fixes many errors and also invents some. Leaving text alone is always safe, so a
correction is accepted only where three checks agree:

1. the edit budget: the answer may not differ from the input by more than a share of its
   characters (a rewritten sentence is a hallucination, not a correction: it is refused
   whole), and each changed stretch of words may be only a few typos away from what it
   replaces (a typo is fixed by a nearby word; "projeg" → "poste" is a guess, and on
   validation such far edits were mostly wrong): stretches over it are put back, the rest kept;
2. the lexicon: each changed stretch of words may only introduce words French knows (or words
   already in the input); stretches that fail are put back as they were, the rest is kept;
3. the model's own confidence: the corrected text must be more likely, under the model and
   its prompt, than the unchanged input, by a margin (in nats). With `per_edit`, each changed
   stretch is judged on its own (the input with only that stretch applied), so one bad edit
   no longer costs the good ones beside it. A stretch that only replaces words the lexicon does
   not know (a misspelling fixed) may be asked for a smaller margin (`nonword_margin`) than one
   that swaps a French word for another.

The thresholds are tuned on the validation split (`guard_tuning.py`) and saved as `guard.json`
next to the checkpoint; the test split never sees them change.

A text longer than `MAX_JUDGED_CHARS` (source or answer) is not judged at all: it is left as it
was ("too long"). The corrector answers a long text sentence by sentence and each part is
guarded on its own, so a text that long reaches the guard only when an entry was answered whole
(a responses file made by hand); weighing its edits one by one would take minutes of diffs, and
a context of thousands of tokens for each score.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from correcteur.augment import french_lexicon
from correcteur.errors import UserError
from correcteur.files import write_json
from correcteur.scoring import ResponseScorer
from correcteur.textdiff import (
    DiffPiece,
    apply_edits,
    edit_pieces,
    edits_of,
    levenshtein,
    typo_distance,
)

WORD = re.compile(r"\w+")
GUARD_FILE = "guard.json"
MAX_JUDGED_CHARS = 20_000  # longer texts are left as they are, unjudged ("too long")
MAX_STRETCH_CELLS = 1_000_000  # a longer stretch's typos are not counted: it is far (see `stretch_distances`)


@dataclass
class GuardConfig:
    max_edit_ratio: float = 0.3  # character edits allowed, as a share of the input's length
    min_margin: float = 0.0  # log p(correction) - log p(input) the model must reach, in nats
    lexicon: bool = True  # undo changed stretches that bring in words outside the lexicon
    per_edit: bool = False  # the margin judges each changed stretch alone, not the whole answer
    max_stretch_edits: int | None = None  # typos (`typo_distance`) allowed in one changed stretch (None: any)
    nonword_margin: float | None = None  # the margin asked of edits that only fix words outside
    # the lexicon (a misspelling is safer to fix than a real word to swap); None: min_margin


class Guard:
    """`guard(source, candidate) -> text`: the candidate, the part of it that passes, or the source."""

    def __init__(self, model: torch.nn.Module, tokenizer, prompt_style: str = "alpaca",
                 config: GuardConfig | None = None, lexicon: frozenset[str] | None = None,
                 input_prefix: str = ""):
        self.model, self.tokenizer, self.prompt_style = model, tokenizer, prompt_style
        self.input_prefix = input_prefix
        self.config = config or GuardConfig()
        if lexicon is None and (self.config.lexicon or self.config.nonword_margin is not None):
            lexicon = french_lexicon()
        self.lexicon = lexicon or frozenset()
        self.scorer = ResponseScorer(model, tokenizer, prompt_style, input_prefix)

    def __call__(self, source: str, candidate: str) -> str:
        return self.decide(source, candidate)[0]

    def decide(self, source: str, candidate: str) -> tuple[str, str]:
        """The text to keep and why: unchanged, empty, too long, edit budget, lexicon, margin
        or accepted."""
        answer = Answer(self, source, candidate)
        kept, reason = kept_edits(self.config, answer)
        return answer.text(kept), reason

    def is_known(self, word: str, source_words: set[str]) -> bool:
        return (len(word) == 1 or word.isdigit() or word in source_words
                or word.lower() in self.lexicon)

    def known_edits(self, source: str, pieces: list[DiffPiece]) -> set[int]:
        """The edits that bring in only known words (a pure deletion brings in nothing)."""
        source_words = set(WORD.findall(source))
        return {number for number, (_, _, inserted) in enumerate(edits_of(pieces))
                if all(self.is_known(word, source_words) for word in WORD.findall(inserted))}

    def nonword_edits(self, pieces: list[DiffPiece]) -> set[int]:
        """The edits that remove words, none of which the lexicon knows (none without a lexicon)."""
        if not self.lexicon:
            return set()
        return {number for number, (_, removed, _) in enumerate(edits_of(pieces))
                if WORD.search(removed) and not any(self.is_known(word, set()) for word in WORD.findall(removed))}

    def log_probs(self, source: str, responses: list[str]) -> list[float]:
        """log p(response, end-of-text | prompt for `source`) under the model, for each response,
        in one batch that shares the prompt (`scoring.continuation_log_probs`)."""
        try:
            return self.scorer(source, responses)
        except ValueError as error:
            raise UserError(f"the answers cannot be scored: {error}") from None


class Answer:
    """One answer to one source: its edits, which of them bring in only known words, and the
    model's scores of any texts made of them, each scored once (in batches, when asked)."""

    def __init__(self, guard: Guard, source: str, candidate: str):
        self.guard, self.source, self.candidate = guard, source, candidate
        self.too_long = max(len(source), len(candidate)) > MAX_JUDGED_CHARS
        self.pieces = whole_edit(source, candidate) if self.too_long else edit_pieces(source, candidate)
        self.every = set(range(len(edits_of(self.pieces))))
        weighed = not self.too_long  # a text too long is refused before its words are looked up
        self.known = guard.known_edits(source, self.pieces) if guard.lexicon and weighed else self.every
        self.nonword = guard.nonword_edits(self.pieces) if weighed else set()
        self._scores: dict[str, float] = {}
        self._texts: dict[frozenset[int], str] = {}

    @functools.cached_property
    def distance(self) -> int:
        """Characters edited (`levenshtein`), computed when the edit budget asks."""
        return levenshtein(self.source, self.candidate)

    @functools.cached_property
    def stretch_distances(self) -> list[int]:
        """Typos between each edit's removed and inserted text: only asked for when a stretch
        budget is set and the answer passed the others (a rewrite's long stretches never are).
        A stretch of more than `MAX_STRETCH_CELLS` character pairs counts as long as its longer
        side, an upper bound that no sensible budget allows, instead of taking minutes."""
        return [typo_distance(removed, inserted) if len(removed) * len(inserted) <= MAX_STRETCH_CELLS
                else max(len(removed), len(inserted)) for _, removed, inserted in edits_of(self.pieces)]

    def refusal(self, max_edit_ratio: float) -> str | None:
        """Why the answer is kept from being weighed at all under this edit budget, or None."""
        if not self.every:
            return "unchanged"
        if not self.candidate.strip():
            return "empty"
        if self.too_long:
            return "too long"
        if self.distance > max(1.0, max_edit_ratio * len(self.source)):
            return "edit budget"
        return None

    def text(self, edits: set[int]) -> str:
        """The source with `edits` applied, each text made once: tuning asks for the same few
        thousands of times, and on a long answer making one is not free."""
        key = frozenset(edits)
        if key not in self._texts:
            self._texts[key] = apply_edits(self.pieces, edits)
        return self._texts[key]

    def near(self, edits: set[int], max_stretch_edits: int | None) -> set[int]:
        """The edits that are at most `max_stretch_edits` typos away from their stretch."""
        if max_stretch_edits is None:
            return edits
        return {n for n in edits if self.stretch_distances[n] <= max_stretch_edits}

    def score(self, texts: list[str]) -> None:
        """Score the texts not scored yet (and the source), in one batch."""
        todo = [t for t in dict.fromkeys([self.source, *texts]) if t not in self._scores]
        if todo:
            self._scores.update(zip(todo, self.guard.log_probs(self.source, todo), strict=True))

    def margin(self, edits: set[int]) -> float:
        """log p(source with `edits` applied) - log p(source), in nats."""
        text = self.text(edits)
        self.score([text])
        return self._scores[text] - self._scores[self.source]


def whole_edit(source: str, candidate: str) -> list[DiffPiece]:
    """The answer as one edit (or none), without a diff: what a text too long to judge gets."""
    return [("equal", source)] if source == candidate else [("edit", source, candidate)]


def kept_edits(config: GuardConfig, answer: Answer) -> tuple[set[int], str]:
    """The edits `config` keeps of `answer`, and why: the one decision `Guard.decide` makes
    and `tune_guard` replays for every setting of its grid."""
    refusal = answer.refusal(config.max_edit_ratio)
    if refusal:
        return set(), refusal
    kept = answer.known if config.lexicon else answer.every
    if not kept:
        return set(), "lexicon"
    kept = answer.near(kept, config.max_stretch_edits)
    if not kept:
        return set(), "edit budget"

    def required(edits: set[int]) -> float:
        nonword = config.nonword_margin is not None and edits <= answer.nonword
        return config.nonword_margin if nonword else config.min_margin

    if config.per_edit:
        answer.score([answer.text({n}) for n in kept])
        kept = {n for n in kept if answer.margin({n}) >= required({n})}
    elif answer.margin(kept) < required(kept):
        kept = set()
    return kept, "accepted" if kept else "margin"


def save_guard_config(config: GuardConfig, folder: str | Path, tuning: dict | None = None) -> Path:
    return write_json(Path(folder) / GUARD_FILE, {"config": dataclasses.asdict(config), "tuning": tuning or {}})


def load_guard_config(folder: str | Path) -> GuardConfig:
    """The tuned thresholds saved next to a checkpoint, or the defaults when there are none."""
    path = Path(folder) / GUARD_FILE
    if not path.is_file():
        return GuardConfig()
    return GuardConfig(**json.loads(path.read_text(encoding="utf-8"))["config"])


def checkpoint_folder(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def guard_for_checkpoint(model: torch.nn.Module, tokenizer, prompt_style: str,
                         checkpoint: str | Path, input_prefix: str = "") -> Guard:
    """The guard with the thresholds tuned for this checkpoint (defaults when untuned)."""
    return Guard(model, tokenizer, prompt_style, load_guard_config(checkpoint_folder(checkpoint)),
                 input_prefix=input_prefix)


