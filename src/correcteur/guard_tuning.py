"""Tuning the guard's thresholds on the validation split: a grid, scored against the targets.

Every setting of the grid is replayed on the same answers with `guard.kept_edits`, the decision
the corrector makes at run time, and the best error reduction whose harm rate and clean-text
preservation meet their targets (one standard error inside their bounds) is saved as
`guard.json` next to the checkpoint.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

from tqdm import tqdm

from correcteur.correct import Corrector
from correcteur.errors import UserError
from correcteur.files import load_entries, run_lock, write_json
from correcteur.guard import (
    GUARD_FILE,
    MAX_JUDGED_CHARS,
    Answer,
    Guard,
    GuardConfig,
    checkpoint_folder,
    kept_edits,
    save_guard_config,
)
from correcteur.metrics import EntryStats, aggregate, entry_stats, entry_texts
from correcteur.respond import respond, response_parts, usable_entries
from correcteur.textdiff import Part


def wilson_bounds(share: float, n: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion seen in `n` trials, `z` standard errors wide."""
    if n == 0:
        return 0.0, 1.0
    center = share + z * z / (2 * n)
    spread = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return (center - spread) / (1 + z * z / n), (center + spread) / (1 + z * z / n)


def meets_targets(scores: dict, max_harm: float, min_clean: float, z: float) -> bool:
    """Whether harm and clean-text preservation meet their targets `z` standard errors inside
    their bounds (a split without clean sentences has no clean target to miss)."""
    harm_ok = wilson_bounds(scores["harm_rate"] or 0.0, scores["n"], z)[1] <= max_harm
    return harm_ok and (scores["clean_preserved"] is None or
                        wilson_bounds(scores["clean_preserved"], scores["n_clean"], z)[0] >= min_clean)


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
               settings: list[GuardConfig] | None = None, z: float = 1.0
               ) -> tuple[GuardConfig, list[dict]]:
    """Pick the thresholds with the best error reduction whose harm rate and clean-text
    preservation meet the targets, on entries that carry `raw_response` (validation split).

    The targets must hold `z` standard errors inside their bounds (Wilson intervals): out of
    hundreds of settings, the best-looking one on a few dozen clean sentences is flattered by
    chance, and point estimates promised more than the test split gave (benchmarks/RESULTS.md).
    `z=0` compares the point estimates.

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
        parts = [(Answer(guard, source, raw), gap) for source, raw, gap in tuned_parts(entry)]
        for answer, _ in parts:
            if answer.refusal(max_ratio) is None:
                whole = [answer.near(edits, limit) for edits in (answer.every, answer.known) for limit in stretch_edits]
                answer.score([*(answer.text(edits) for edits in whole),
                              *(answer.text({n}) for n in answer.every)])  # all the grid will ask, one batch
        answers.append(parts)

    stats: dict[tuple[int, str], EntryStats] = {}  # settings often agree: score each response once

    def stats_of(index: int, response: str) -> EntryStats:
        if (index, response) not in stats:
            entry = {**entries[index], "model_response": response}
            stats[index, response] = entry_stats(*entry_texts(entry, index))
        return stats[index, response]

    results = []
    for config in settings:
        scores = aggregate([stats_of(index, "".join(answer.text(kept_edits(config, answer)[0]) + gap
                                                    for answer, gap in parts))
                            for index, parts in enumerate(answers)])
        results.append({**dataclasses.asdict(config), **{k: scores[k] for k in (
            "error_reduction", "harm_rate", "clean_preserved", "exact_match", "n", "n_clean")}})

    for r in results:
        r["meets_targets"] = meets_targets(r, max_harm, min_clean, z)
    eligible = [r for r in results if r["meets_targets"]]
    best = (max(eligible, key=lambda r: r["error_reduction"] or 0.0) if eligible
            else min(results, key=lambda r: (r["harm_rate"] or 0.0, -(r["error_reduction"] or 0.0))))
    return GuardConfig(**{field.name: best[field.name] for field in dataclasses.fields(GuardConfig)}), results


def tuned_parts(entry: dict) -> list[Part]:
    """The parts tuning judges an answered entry in: its `response_parts`, or the whole entry
    when it is longer than `MAX_JUDGED_CHARS`, so that the guard leaves it unchanged ("too
    long") in every setting. Replaying thousands of settings on each part of a book would take
    minutes, and its distance would outweigh all the other entries' in the error reduction."""
    if max(len(entry["input"]), len(entry["raw_response"])) > MAX_JUDGED_CHARS:
        return [(entry["input"], entry["raw_response"], "")]
    return response_parts(entry)


def calibrate_guard(checkpoint: str | Path, val_path: str | Path, limit: int | None = None,
                    batch_size: int = 32) -> GuardConfig:
    """Answer the validation split, tune the thresholds on it and save them as guard.json
    next to the checkpoint, where `Corrector.from_checkpoint` and `evaluate` find them.

    The checkpoint's folder is locked (`files.run_lock`) throughout: a run still training there
    would replace best.pt under the thresholds tuned for it, and two tunings would leave the
    guard.json of one next to the validation answers of the other."""
    folder = checkpoint_folder(checkpoint)
    with run_lock(folder, "guard tuning"):
        corrector = Corrector.from_checkpoint(checkpoint, guard=False, chooser=False, batch_size=batch_size)
        entries = usable_entries(load_entries(val_path)[:limit], str(val_path))
        answered = respond(corrector, entries, batch_size=batch_size)
        guard = Guard(corrector.model, corrector.tokenizer, corrector.prompt_style,
                      input_prefix=corrector.input_prefix)
        config, grid = tune_guard(guard, answered)
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
