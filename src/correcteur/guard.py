"""Guarded correction: the project's answer to "never make text worse".

A small model fixes many errors and also invents some. Leaving text alone is always safe, so a
correction is accepted only where three checks agree:

1. the edit budget: the answer may not differ from the input by more than a share of its
   characters (a rewritten sentence is a hallucination, not a correction);
2. the lexicon: each changed stretch of words may only introduce words French knows (or words
   already in the input); stretches that fail are put back as they were, the rest is kept;
3. the model's own confidence: the corrected text must be more likely, under the model and
   its prompt, than the unchanged input, by a margin (in nats). With `per_edit`, each changed
   stretch is judged on its own (the input with only that stretch applied), so one bad edit
   no longer costs the good ones beside it.

The thresholds are tuned on the validation split (`tune_guard`) and saved as `guard.json`
next to the checkpoint; the test split never sees them change.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from correcteur.correct import diff_words
from correcteur.data import correction_prompt
from correcteur.files import write_json
from correcteur.metrics import levenshtein, score_entries

WORD = re.compile(r"\w+")
GUARD_FILE = "guard.json"


@dataclass
class GuardConfig:
    max_edit_ratio: float = 0.3  # character edits allowed, as a share of the input's length
    min_margin: float = 0.0  # log p(correction) - log p(input) the model must reach, in nats
    lexicon: bool = True  # undo changed stretches that bring in words outside the lexicon
    per_edit: bool = False  # the margin judges each changed stretch alone, not the whole answer


Piece = tuple[str, str] | tuple[str, str, str]  # ("equal", text) or ("edit", removed, inserted)


def edit_pieces(source: str, candidate: str) -> list[Piece]:
    """`diff_words` as equal runs and edits (a removed text and the text replacing it, either
    of which may be empty)."""
    pieces: list[Piece] = []
    for tag, text in diff_words(source, candidate):
        if tag == "equal":
            pieces.append(("equal", text))
        elif tag == "insert" and pieces and pieces[-1][0] == "edit" and not pieces[-1][2]:
            pieces[-1] = ("edit", pieces[-1][1], text)
        else:
            pieces.append(("edit", text, "") if tag == "delete" else ("edit", "", text))
    return pieces


def apply_edits(pieces: list[Piece], accepted: set[int]) -> str:
    """The source with the edits numbered in `accepted` (0, 1, ... in order) applied."""
    text, number = [], 0
    for piece in pieces:
        if piece[0] == "equal":
            text.append(piece[1])
        else:
            text.append(piece[2] if number in accepted else piece[1])
            number += 1
    return "".join(text)


def edit_count(pieces: list[Piece]) -> int:
    return sum(piece[0] == "edit" for piece in pieces)


class Guard:
    """`guard(source, candidate) -> text`: the candidate, the part of it that passes, or the source."""

    def __init__(self, model: torch.nn.Module, tokenizer, prompt_style: str = "alpaca",
                 config: GuardConfig | None = None, lexicon: frozenset[str] | None = None,
                 input_prefix: str = ""):
        self.model, self.tokenizer, self.prompt_style = model, tokenizer, prompt_style
        self.input_prefix = input_prefix
        self.config = config or GuardConfig()
        if lexicon is None and self.config.lexicon:
            from correcteur.augment import french_lexicon

            lexicon = french_lexicon()
        self.lexicon = lexicon or frozenset()

    def __call__(self, source: str, candidate: str) -> str:
        return self.decide(source, candidate)[0]

    def decide(self, source: str, candidate: str) -> tuple[str, str]:
        """The text to keep and why: unchanged, empty, edit budget, lexicon, margin or accepted."""
        if candidate == source:
            return source, "unchanged"
        if not candidate.strip():
            return source, "empty"
        if levenshtein(source, candidate) > max(1.0, self.config.max_edit_ratio * len(source)):
            return source, "edit budget"
        pieces = edit_pieces(source, candidate)
        kept = self.known_edits(source, pieces) if self.config.lexicon else set(range(edit_count(pieces)))
        if not kept:
            return source, "lexicon"
        if self.config.per_edit:
            margins = self.edit_margins(source, pieces, sorted(kept))
            kept = {number for number, margin in margins.items() if margin >= self.config.min_margin}
            if not kept:
                return source, "margin"
            return apply_edits(pieces, kept), "accepted"
        candidate = apply_edits(pieces, kept)
        if self.margin(source, candidate) < self.config.min_margin:
            return source, "margin"
        return candidate, "accepted"

    def is_known(self, word: str, source_words: set[str]) -> bool:
        return (len(word) == 1 or word.isdigit() or word in source_words
                or word.lower() in self.lexicon)

    def known_edits(self, source: str, pieces: list[Piece]) -> set[int]:
        """The edits that bring in only known words (a pure deletion brings in nothing)."""
        source_words = set(WORD.findall(source))
        edits = [piece for piece in pieces if piece[0] == "edit"]
        return {number for number, (_, _, inserted) in enumerate(edits)
                if all(self.is_known(word, source_words) for word in WORD.findall(inserted))}

    def known_words_only(self, source: str, candidate: str) -> str:
        """The candidate with every changed stretch that introduces an unknown word put back
        to the source's words."""
        pieces = edit_pieces(source, candidate)
        return apply_edits(pieces, self.known_edits(source, pieces))

    @torch.no_grad()
    def log_probs(self, source: str, responses: list[str]) -> list[float]:
        """log p(response, end-of-text | prompt for `source`) under the model, for each response
        (one batch: right padding cannot change the scores of the tokens before it)."""
        prompt = self.tokenizer.encode(correction_prompt(source, self.prompt_style, self.input_prefix),
                                       allowed_special=set())
        answers = [self.tokenizer.encode(r, allowed_special=set()) + [self.tokenizer.eot_token] for r in responses]
        width = len(prompt) + max(map(len, answers))
        cut = max(0, width - self.model.context_length)  # drop the prompt's start, alike in every row
        rows = [prompt[cut:] + answer + [self.tokenizer.eot_token] * (width - len(prompt) - len(answer))
                for answer in answers]
        ids = torch.tensor(rows, device=next(self.model.parameters()).device)
        scored = torch.zeros_like(ids[:, 1:], dtype=torch.bool)
        start = len(prompt) - cut - 1  # the position whose logits predict the answer's first token
        for row, answer in enumerate(answers):
            scored[row, start:start + len(answer)] = True
        logits = self.model(ids[:, :-1], logits_at=scored).float()
        token_log_probs = torch.log_softmax(logits, dim=-1).gather(1, ids[:, 1:][scored][:, None])[:, 0]
        return [part.sum().item() for part in token_log_probs.split([len(a) for a in answers])]

    def log_prob(self, source: str, response: str) -> float:
        return self.log_probs(source, [response])[0]

    def margin(self, source: str, candidate: str) -> float:
        unchanged, corrected = self.log_probs(source, [source, candidate])
        return corrected - unchanged

    def edit_margins(self, source: str, pieces: list[Piece], numbers: list[int]) -> dict[int, float]:
        """For each edit numbered in `numbers`: log p(source with that edit alone) - log p(source)."""
        unchanged, *alone = self.log_probs(source, [source] + [apply_edits(pieces, {n}) for n in numbers])
        return {number: score - unchanged for number, score in zip(numbers, alone, strict=True)}


def save_guard_config(config: GuardConfig, folder: str | Path, tuning: dict | None = None) -> Path:
    return write_json(Path(folder) / GUARD_FILE, {"config": dataclasses.asdict(config), "tuning": tuning or {}})


def load_guard_config(folder: str | Path) -> GuardConfig:
    """The tuned thresholds saved next to a checkpoint, or the defaults when there are none."""
    path = Path(folder) / GUARD_FILE
    if not path.is_file():
        return GuardConfig()
    return GuardConfig(**json.loads(path.read_text(encoding="utf-8"))["config"])


def tune_guard(guard: Guard, entries: list[dict], max_harm: float = 0.05, min_clean: float = 0.97,
               ratios: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0),
               margins: tuple[float, ...] = (-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0),
               prefix: str = "") -> tuple[GuardConfig, list[dict]]:
    """Pick the thresholds with the best error reduction whose harm rate and clean-text
    preservation meet the targets, on entries that carry `raw_response` (validation split).

    The model scores each entry once (one batch: the input, the answer with and without the
    lexicon step, and each edit alone), so the grid's size costs no model time. When no
    setting meets the targets, the one with the lowest harm rate wins."""
    facts = [_guard_facts(guard, entry["input"].removeprefix(prefix), entry["raw_response"], max(ratios))
             for entry in tqdm(entries, desc="tuning the guard", unit="entry", disable=None)]

    results = []
    for ratio, margin, use_lexicon, per_edit in itertools.product(ratios, margins, (False, True), (False, True)):
        answered = []
        for entry, fact in zip(entries, facts, strict=True):
            answer = fact["source"]
            if fact["distance"] <= max(1.0, ratio * len(answer)):
                kept = fact["known"] if use_lexicon else fact["all"]
                if per_edit:
                    kept = {n for n in kept if fact["edit_margins"][n] >= margin}
                elif fact["whole_margin"][use_lexicon] < margin:
                    kept = set()
                answer = apply_edits(fact["pieces"], kept)
            answered.append({**entry, "model_response": answer})
        scores = score_entries(answered, prefix=prefix)
        results.append({"max_edit_ratio": ratio, "min_margin": margin, "lexicon": use_lexicon, "per_edit": per_edit,
                        **{k: scores[k] for k in ("error_reduction", "harm_rate", "clean_preserved", "exact_match")}})

    def meets(r: dict) -> bool:
        return (r["harm_rate"] or 0) <= max_harm and (r["clean_preserved"] is None or r["clean_preserved"] >= min_clean)

    eligible = [r for r in results if meets(r)]
    best = (max(eligible, key=lambda r: r["error_reduction"] or 0.0) if eligible
            else min(results, key=lambda r: r["harm_rate"] or 0.0))
    return GuardConfig(best["max_edit_ratio"], best["min_margin"], best["lexicon"], best["per_edit"]), results


def _guard_facts(guard: Guard, source: str, raw: str, widest_ratio: float) -> dict:
    """What every guard setting needs to know of one answer, with the model's scores."""
    pieces = edit_pieces(source, raw)
    every = set(range(edit_count(pieces)))
    facts = {"source": source, "pieces": pieces, "all": every, "distance": levenshtein(source, raw),
             "known": guard.known_edits(source, pieces) if guard.lexicon else every,
             "whole_margin": {False: 0.0, True: 0.0}, "edit_margins": {}}
    if not raw.strip() or not every or facts["distance"] > max(1.0, widest_ratio * len(source)):
        facts["all"] = facts["known"] = set()  # never accepted, whatever the setting: no scoring
        return facts
    wholes = [apply_edits(pieces, facts["all"]), apply_edits(pieces, facts["known"])]
    unchanged, *scores = guard.log_probs(source, [source, *wholes, *(apply_edits(pieces, {n}) for n in sorted(every))])
    facts["whole_margin"] = {False: scores[0] - unchanged, True: scores[1] - unchanged}
    facts["edit_margins"] = {n: score - unchanged for n, score in zip(sorted(every), scores[2:], strict=True)}
    return facts


def checkpoint_folder(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def guard_for_checkpoint(model: torch.nn.Module, tokenizer, prompt_style: str,
                         checkpoint: str | Path, input_prefix: str = "") -> Guard:
    """The guard with the thresholds tuned for this checkpoint (defaults when untuned)."""
    return Guard(model, tokenizer, prompt_style, load_guard_config(checkpoint_folder(checkpoint)),
                 input_prefix=input_prefix)


def calibrate_guard(checkpoint: str | Path, val_path: str | Path, limit: int | None = None,
                    prefix: str = "", batch_size: int = 32) -> GuardConfig:
    """Answer the validation split, tune the thresholds on it and save them as guard.json
    next to the checkpoint, where `Corrector.from_checkpoint` and `evaluate` find them."""
    from correcteur.correct import Corrector
    from correcteur.evaluate import respond
    from correcteur.files import load_entries

    corrector = Corrector.from_checkpoint(checkpoint, guard=False, batch_size=batch_size)
    entries = load_entries(val_path)[:limit]
    answered = respond(corrector, entries, prefix=prefix, batch_size=batch_size)
    guard = Guard(corrector.model, corrector.tokenizer, corrector.prompt_style, input_prefix=corrector.input_prefix)
    config, grid = tune_guard(guard, answered, prefix=prefix)
    folder = checkpoint_folder(checkpoint)
    write_json(folder / "guard_val_responses.json", answered)  # what the thresholds were tuned on
    save_guard_config(config, folder, {"val_file": str(val_path), "entries": len(entries), "grid": grid})
    return config
