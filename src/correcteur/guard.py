"""Guarded correction: the project's answer to "never make text worse".

A small model fixes many errors and also invents some. Leaving text alone is always safe, so a
correction is accepted only where three checks agree:

1. the edit budget: the answer may not differ from the input by more than a share of its
   characters (a rewritten sentence is a hallucination, not a correction);
2. the lexicon: each changed stretch of words may only introduce words French knows (or words
   already in the input); stretches that fail are put back as they were, the rest is kept;
3. the model's own confidence: the corrected text must be more likely, under the model and
   its prompt, than the unchanged input, by a margin (in nats).

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
        if self.config.lexicon:
            candidate = self.known_words_only(source, candidate)
            if candidate == source:
                return source, "lexicon"
        if self.margin(source, candidate) < self.config.min_margin:
            return source, "margin"
        return candidate, "accepted"

    def is_known(self, word: str, source_words: set[str]) -> bool:
        return (len(word) == 1 or word.isdigit() or word in source_words
                or word.lower() in self.lexicon)

    def known_words_only(self, source: str, candidate: str) -> str:
        """The candidate with every changed stretch that introduces an unknown word put back
        to the source's words."""
        source_words = set(WORD.findall(source))
        kept, removed = [], ""
        for tag, text in diff_words(source, candidate):
            if tag == "delete":
                removed = text
                continue
            if tag == "insert":
                ok = all(self.is_known(w, source_words) for w in WORD.findall(text))
                kept.append(text if ok else removed)
            else:
                kept.append(text)  # a deletion with no insertion introduces nothing
            removed = ""
        return "".join(kept)

    @torch.no_grad()
    def log_prob(self, source: str, response: str) -> float:
        """log p(response, end-of-text | prompt for `source`) under the model."""
        prompt = self.tokenizer.encode(correction_prompt(source, self.prompt_style, self.input_prefix),
                                       allowed_special=set())
        answer = self.tokenizer.encode(response, allowed_special=set()) + [self.tokenizer.eot_token]
        ids = torch.tensor([prompt + answer], device=next(self.model.parameters()).device)
        ids = ids[:, -self.model.context_length:]
        logits = self.model(ids[:, :-1]).float()
        log_probs = torch.log_softmax(logits[0, -len(answer):], dim=-1)
        return log_probs.gather(1, ids[0, -len(answer):, None]).sum().item()

    def margin(self, source: str, candidate: str) -> float:
        return self.log_prob(source, candidate) - self.log_prob(source, source)


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

    Margins are computed once per entry (with and without the lexicon step), so the grid
    costs two model scorings per entry whatever its size. When no setting meets the targets,
    the one with the lowest harm rate wins."""
    facts = []
    for entry in tqdm(entries, desc="tuning the guard", unit="entry", disable=None):
        source, raw = entry["input"].removeprefix(prefix), entry["raw_response"]
        variants = {}
        for use_lexicon in (False, True):
            candidate = guard.known_words_only(source, raw) if use_lexicon and guard.lexicon else raw
            changed = candidate != source and bool(candidate.strip())
            variants[use_lexicon] = (candidate, guard.margin(source, candidate) if changed else 0.0)
        facts.append((source, raw, variants))

    results = []
    for ratio, margin, use_lexicon in itertools.product(ratios, margins, (False, True)):
        answered = []
        for entry, (source, raw, variants) in zip(entries, facts, strict=True):
            candidate, model_margin = variants[use_lexicon]
            too_far = levenshtein(source, raw) > max(1.0, ratio * len(source))
            accept = candidate.strip() and not too_far and model_margin >= margin
            answered.append({**entry, "model_response": candidate if accept else source})
        scores = score_entries(answered, prefix=prefix)
        results.append({"max_edit_ratio": ratio, "min_margin": margin, "lexicon": use_lexicon,
                        **{k: scores[k] for k in ("error_reduction", "harm_rate", "clean_preserved", "exact_match")}})

    def meets(r: dict) -> bool:
        return (r["harm_rate"] or 0) <= max_harm and (r["clean_preserved"] is None or r["clean_preserved"] >= min_clean)

    eligible = [r for r in results if meets(r)]
    best = (max(eligible, key=lambda r: r["error_reduction"] or 0.0) if eligible
            else min(results, key=lambda r: r["harm_rate"] or 0.0))
    return GuardConfig(best["max_edit_ratio"], best["min_margin"], best["lexicon"]), results


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
    save_guard_config(config, checkpoint_folder(checkpoint),
                      {"val_file": str(val_path), "entries": len(entries), "grid": grid})
    return config
