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

The thresholds are tuned on the validation split (`tune_guard`) and saved as `guard.json`
next to the checkpoint; the test split never sees them change.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from correcteur.correct import Part, diff_words
from correcteur.data import correction_prompt
from correcteur.errors import UserError
from correcteur.files import write_json
from correcteur.metrics import EntryStats, aggregate, entry_stats, entry_texts, levenshtein

WORD = re.compile(r"\w+")
GUARD_FILE = "guard.json"


@dataclass
class GuardConfig:
    max_edit_ratio: float = 0.3  # character edits allowed, as a share of the input's length
    min_margin: float = 0.0  # log p(correction) - log p(input) the model must reach, in nats
    lexicon: bool = True  # undo changed stretches that bring in words outside the lexicon
    per_edit: bool = False  # the margin judges each changed stretch alone, not the whole answer
    max_stretch_edits: int | None = None  # typos (`typo_distance`) allowed in one changed stretch (None: any)
    nonword_margin: float | None = None  # the margin asked of edits that only fix words outside
    # the lexicon (a misspelling is safer to fix than a real word to swap); None: min_margin


DiffPiece = tuple[str, str] | tuple[str, str, str]  # ("equal", text) or ("edit", removed, inserted)


def edit_pieces(source: str, candidate: str) -> list[DiffPiece]:
    """`diff_words` as equal runs and edits (a removed text and the text replacing it, either
    of which may be empty)."""
    pieces: list[DiffPiece] = []
    for tag, text in diff_words(source, candidate):
        if tag == "equal":
            pieces.append(("equal", text))
        elif tag == "insert" and pieces and pieces[-1][0] == "edit" and not pieces[-1][2]:
            pieces[-1] = ("edit", pieces[-1][1], text)
        else:
            pieces.append(("edit", text, "") if tag == "delete" else ("edit", "", text))
    return pieces


def apply_edits(pieces: list[DiffPiece], accepted: set[int]) -> str:
    """The source with the edits numbered in `accepted` (0, 1, ... in order) applied."""
    text, number = [], 0
    for piece in pieces:
        if piece[0] == "equal":
            text.append(piece[1])
        else:
            text.append(piece[2] if number in accepted else piece[1])
            number += 1
    return "".join(text)


def typo_distance(a: str, b: str) -> int:
    """Edit distance where swapping two neighbouring characters costs 1, like the other slips of
    a finger (optimal string alignment): "enfnats" is one typo away from "enfants", not two. On
    validation, every edit of the model that was one such swap brought the text closer (34 of 34)."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i]
        for j in range(1, len(b) + 1):
            best = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                best = min(best, rows[-2][j - 2] + 1)
            row.append(best)
        rows.append(row)
    return rows[-1][-1]


def edits_of(pieces: list[DiffPiece]) -> list[tuple[str, str, str]]:
    """The edits among the pieces, in order: an edit's number is its index here."""
    return [piece for piece in pieces if piece[0] == "edit"]


class Guard:
    """`guard(source, candidate) -> text`: the candidate, the part of it that passes, or the source."""

    def __init__(self, model: torch.nn.Module, tokenizer, prompt_style: str = "alpaca",
                 config: GuardConfig | None = None, lexicon: frozenset[str] | None = None,
                 input_prefix: str = ""):
        self.model, self.tokenizer, self.prompt_style = model, tokenizer, prompt_style
        self.input_prefix = input_prefix
        self.config = config or GuardConfig()
        if lexicon is None and (self.config.lexicon or self.config.nonword_margin is not None):
            from correcteur.augment import french_lexicon

            lexicon = french_lexicon()
        self.lexicon = lexicon or frozenset()

    def __call__(self, source: str, candidate: str) -> str:
        return self.decide(source, candidate)[0]

    def decide(self, source: str, candidate: str) -> tuple[str, str]:
        """The text to keep and why: unchanged, empty, edit budget, lexicon, margin or accepted."""
        answer = Answer(self, source, candidate)
        kept, reason = judge(self.config, answer)
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

    @torch.no_grad()
    def log_probs(self, source: str, responses: list[str]) -> list[float]:
        """log p(response, end-of-text | prompt for `source`) under the model, for each response
        (one batch: right padding cannot change the scores of the tokens before it). When the
        longest row overflows the context, the prompt loses its first tokens in every row."""
        prompt = self.tokenizer.encode(correction_prompt(source, self.prompt_style, self.input_prefix),
                                       allowed_special=set())
        answers = [self.tokenizer.encode(r, allowed_special=set()) + [self.tokenizer.eot_token] for r in responses]
        width = len(prompt) + max(map(len, answers))
        cut = max(0, width - self.model.context_length)
        if cut >= len(prompt):
            raise UserError(f"an answer of {max(map(len, answers))} tokens cannot be scored in a context of "
                            f"{self.model.context_length} tokens (it must hold part of the prompt too)")
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


class Answer:
    """One answer to one source: its edits, which of them bring in only known words, and the
    model's scores of any texts made of them, each scored once (in batches, when asked)."""

    def __init__(self, guard: Guard, source: str, candidate: str):
        self.guard, self.source, self.candidate = guard, source, candidate
        self.pieces = edit_pieces(source, candidate)
        self.every = set(range(len(edits_of(self.pieces))))
        self.known = guard.known_edits(source, self.pieces) if guard.lexicon else self.every
        self.nonword = guard.nonword_edits(self.pieces)
        self.distance = levenshtein(source, candidate)
        self._scores: dict[str, float] = {}

    @functools.cached_property
    def stretch_distances(self) -> list[int]:
        """Typos between each edit's removed and inserted text: only asked for when a stretch
        budget is set and the answer passed the others (a rewrite's long stretches never are)."""
        return [typo_distance(removed, inserted) for _, removed, inserted in edits_of(self.pieces)]

    def text(self, edits: set[int]) -> str:
        return apply_edits(self.pieces, edits)

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


def judge(config: GuardConfig, answer: Answer) -> tuple[set[int], str]:
    """The edits `config` keeps of `answer`, and why: the one decision `Guard.decide` makes
    and `tune_guard` replays for every setting of its grid."""
    if not answer.every:
        return set(), "unchanged"
    if not answer.candidate.strip():
        return set(), "empty"
    if answer.distance > max(1.0, config.max_edit_ratio * len(answer.source)):
        return set(), "edit budget"
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


def response_parts(entry: dict, prefix: str = "") -> list[Part]:
    """The (part, raw answer, gap) pieces of an answered entry: the whole input, or the parts
    a sentence too long for the context was answered in."""
    if "raw_parts" in entry:
        return [tuple(part) for part in entry["raw_parts"]]
    return [(entry["input"].removeprefix(prefix), entry["raw_response"], "")]


def wilson_bounds(share: float, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion seen in `n` trials, `z` standard errors wide."""
    if n == 0:
        return 0.0, 1.0
    center = share + z * z / (2 * n)
    spread = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return (center - spread) / (1 + z * z / n), (center + spread) / (1 + z * z / n)


RATIOS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
MARGINS = (-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
STRETCH_EDITS = (None, 1, 2, 3)
NONWORD_MARGINS = (None, -2.0, 0.0, 1.0, 2.0, 3.0)


def guard_settings(ratios: tuple[float, ...] = RATIOS, margins: tuple[float, ...] = MARGINS,
                   stretch_edits: tuple[int | None, ...] = STRETCH_EDITS,
                   nonword_margins: tuple[float | None, ...] = NONWORD_MARGINS) -> list[GuardConfig]:
    """The grid `tune_guard` searches: every combination, less those that would ask more of a
    misspelling fixed than of a French word swapped."""
    settings = [GuardConfig(*setting) for setting in itertools.product(
        ratios, margins, (False, True), (False, True), stretch_edits, nonword_margins)]
    return [c for c in settings if c.nonword_margin is None or c.nonword_margin < c.min_margin]


def tune_guard(guard: Guard, entries: list[dict], max_harm: float = 0.05, min_clean: float = 0.97,
               settings: list[GuardConfig] | None = None, prefix: str = "", z: float = 1.0
               ) -> tuple[GuardConfig, list[dict]]:
    """Pick the thresholds with the best error reduction whose harm rate and clean-text
    preservation meet the targets, on entries that carry `raw_response` (validation split).

    The targets must hold `z` standard errors inside their bounds (Wilson intervals): out of
    hundreds of settings, the best-looking one on a few dozen clean sentences is flattered by chance,
    and a guard tuned on point estimates kept 0.88 of the test split's clean sentences where
    validation had promised 0.98 (benchmarks/RESULTS.md). `z=0` compares the point estimates.

    The model scores each entry once (one batch: the input, the answer with and without the
    lexicon step and each stretch budget, and each edit alone), so the grid's size costs no
    model time, and each distinct guarded answer is compared with its reference once. A guard tuned
    without a lexicon (`lexicon=False` and none given) treats every word as known. When no
    setting meets the targets, the one with the lowest harm rate (then the best error reduction) wins."""
    if not entries:
        raise UserError("no validation entries to tune the guard on (an empty file, or --limit 0)")
    settings = guard_settings() if settings is None else settings
    if not settings:
        raise ValueError("tune_guard needs at least one setting to try")
    max_ratio = max(c.max_edit_ratio for c in settings)
    stretch_edits = {c.max_stretch_edits for c in settings}
    answers = []  # for each entry, (Answer, gap) for each part it was answered in
    for entry in tqdm(entries, desc="tuning the guard", unit="entry", disable=None):
        parts = [(Answer(guard, source, raw), gap) for source, raw, gap in response_parts(entry, prefix)]
        for answer, _ in parts:
            if answer.every and answer.candidate.strip() and \
                    answer.distance <= max(1.0, max_ratio * len(answer.source)):
                whole = [answer.near(edits, limit) for edits in (answer.every, answer.known) for limit in stretch_edits]
                answer.score([*(answer.text(edits) for edits in whole),
                              *(answer.text({n}) for n in answer.every)])  # all the grid will ask, one batch
        answers.append(parts)

    stats: dict[tuple[int, str], EntryStats] = {}  # settings often agree: score each response once

    def stats_of(index: int, response: str) -> EntryStats:
        if (index, response) not in stats:
            entry = {**entries[index], "model_response": response}
            stats[index, response] = entry_stats(*entry_texts(entry, prefix, index))
        return stats[index, response]

    results = []
    for config in settings:
        scores = aggregate([stats_of(index, "".join(answer.text(judge(config, answer)[0]) + gap
                                                    for answer, gap in parts))
                            for index, parts in enumerate(answers)])
        results.append({**dataclasses.asdict(config), **{k: scores[k] for k in (
            "error_reduction", "harm_rate", "clean_preserved", "exact_match", "n", "n_clean")}})

    def meets(r: dict) -> bool:
        harm_ok = wilson_bounds(r["harm_rate"] or 0.0, r["n"], z)[1] <= max_harm
        return harm_ok and (r["clean_preserved"] is None or
                            wilson_bounds(r["clean_preserved"], r["n_clean"], z)[0] >= min_clean)

    for r in results:
        r["meets_targets"] = meets(r)
    eligible = [r for r in results if r["meets_targets"]]
    best = (max(eligible, key=lambda r: r["error_reduction"] or 0.0) if eligible
            else min(results, key=lambda r: (r["harm_rate"] or 0.0, -(r["error_reduction"] or 0.0))))
    return GuardConfig(**{field.name: best[field.name] for field in dataclasses.fields(GuardConfig)}), results


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


def grid_row(grid: list[dict], config: GuardConfig) -> dict:
    """The row of `tune_guard`'s grid that holds `config`'s setting (a grid saved before a
    check existed lacks its key: the check was off, None)."""
    setting = dataclasses.asdict(config)
    for row in grid:
        if all(row.get(k) == v for k, v in setting.items()):
            return row
    raise UserError(f"the saved tuning grid has no row for {config}: tune the guard again "
                    "(`python -m correcteur guard`)")


def chosen_setting(checkpoint: str | Path) -> dict:
    """The grid row of the setting `calibrate_guard` saved beside `checkpoint`: what validation
    promised for it, and whether it met the targets."""
    saved = json.loads((checkpoint_folder(checkpoint) / GUARD_FILE).read_text(encoding="utf-8"))
    return grid_row(saved["tuning"]["grid"], GuardConfig(**saved["config"]))


def describe_setting(row: dict) -> str:
    return ", ".join(f"{k} {row[k]:.3f}" for k in ("error_reduction", "harm_rate", "clean_preserved")
                     if row[k] is not None)


def add_guard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a training run's folder (checkpoints/<run>/) or its best.pt")
    parser.add_argument("--val", required=True, help="the validation split (val.json from `correcteur data`)")
    parser.add_argument("--limit", type=int, default=None, help="tune on the first N entries only (none: all)")
    parser.add_argument("--prefix", default="", help="task prefix to strip from inputs (as in `respond`)")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences generated together")


def run_guard(args: argparse.Namespace) -> int:
    config = calibrate_guard(args.checkpoint, args.val, limit=args.limit, prefix=args.prefix,
                             batch_size=args.batch_size)
    chosen = chosen_setting(args.checkpoint)
    verdict = ("meets the targets" if chosen["meets_targets"] else
               "no setting meets the targets: the lowest harm rate was taken")
    print(f"{config}\non {chosen['n']} validation entries ({verdict}): {describe_setting(chosen)}"
          f"\nsaved: {checkpoint_folder(args.checkpoint) / GUARD_FILE}")
    return 0
