"""Reference-based scores of a corrector, always next to the do-nothing (copy) baseline.

A corrector can look good on its own numbers while doing worse than returning its input
unchanged (the project we descend from did, on 182 of 300 entries). So every score here is
relative to the input: `error_reduction` is 0 for the copy and negative when the corrector
adds more errors than it removes, `harm_rate` counts the entries it made worse, and
`clean_preserved` checks that correct sentences are left alone.

Texts are compared after Unicode NFC normalisation and stripping of surrounding whitespace.

Word-level edits (for precision, recall and F0.5): both texts are split into words and single
punctuation marks (`\\w+|[^\\w\\s]`), then the input is aligned with a target (the reference,
or the response) by a word-level Levenshtein alignment with unit costs; ties go to matches,
then substitutions, deletions, insertions. An edit `(start, end, replacement)` replaces input
words `start:end` by the target words `replacement` (an insertion has start == end). Each
substituted word is its own edit, unless the run of changed words around it also inserts or
deletes words: then the whole run is one edit, so that one fix spread over several words
("bienmangé" → "bien mangé") counts once. A proposed edit is correct when the response makes
exactly the same edit as the reference: same input span, same replacement.
Whitespace-only differences are invisible at word level; the character error rate sees them.

Long entries. The alignment's table has one cell per pair of words, so a pair whose words
(less their common ending, which the alignment always keeps) multiply to more than
`EXACT_WORD_CELLS` (a million: two texts of a thousand words) is first cut at the anchors the
two texts share (`textdiff.differing_regions`), and only the regions between anchors are
aligned, each by the same table, while together they hold at most `textdiff.alignment_budget`
cells; a region beyond that is one edit replacing it whole. Below that size the edits are
exactly those of the single table; above it they are the same on texts that mostly agree,
which is what a long entry and its correction are. Distances work the same way
(`textdiff.levenshtein`). A 5 MB entry is scored in seconds, in a few hundred MB.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import statistics
import unicodedata
from pathlib import Path
from typing import NamedTuple

from correcteur.errors import UserError
from correcteur.prompt import HF_PREFIX
from correcteur.textdiff import alignment_budget, differing_regions, levenshtein

BETA = 0.5  # F0.5: a wrong correction costs more than a missed one, as in grammatical error correction
WORD = re.compile(r"\w+|[^\w\s]")
EXACT_WORD_CELLS = 1_000_000  # word pairs in one exact table, or in all the regions of a long pair
SCORE_KEYS = ("n", "n_with_errors", "n_clean", "exact_match", "cer", "copy_cer",
              "error_reduction", "harm_rate", "clean_preserved", "precision", "recall", "f0_5")


class Edit(NamedTuple):
    """Input words `start:end` replaced by `replacement` (empty for a deletion)."""

    start: int
    end: int
    replacement: tuple[str, ...]


def words(text: str) -> list[str]:
    return WORD.findall(text)


def word_edits(source: list[str], target: list[str]) -> list[Edit]:
    """The edits of a word-level Levenshtein alignment of `source` to `target` (see the
    module docstring for how ties and adjacent changes are handled, and for long texts)."""
    keep = _common_end(source, target)  # the alignment keeps it: trimming it changes nothing
    source, target = source[:len(source) - keep], target[:len(target) - keep]
    if len(source) * len(target) <= EXACT_WORD_CELLS:
        return _aligned_edits(source, target)
    edits, budget = [], alignment_budget(EXACT_WORD_CELLS, len(source) + len(target))
    for i1, i2, j1, j2 in differing_regions(source, target):
        cells = (i2 - i1) * (j2 - j1)
        if cells > 1 and cells <= budget:
            budget -= cells
            edits += [Edit(i1 + start, i1 + end, replacement)
                      for start, end, replacement in _aligned_edits(source[i1:i2], target[j1:j2])]
        else:  # replaced whole; also what the table says of one word for another, or of an insertion or deletion
            edits.append(Edit(i1, i2, tuple(target[j1:j2])))
    return edits


def _common_end(source: list[str], target: list[str]) -> int:
    most = min(len(source), len(target))
    if source[len(source) - most:] == target[len(target) - most:]:  # one C comparison: a copy
        return most
    size = 0
    while source[-1 - size] == target[-1 - size]:
        size += 1
    return size


def _aligned_edits(source: list[str], target: list[str]) -> list[Edit]:
    """`word_edits` by the full dynamic-programming table (n x m cells)."""
    n, m = len(source), len(target)
    dist = [[i + j if i == 0 or j == 0 else 0 for j in range(m + 1)] for i in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            substitute = dist[i - 1][j - 1] + (source[i - 1] != target[j - 1])
            dist[i][j] = min(substitute, dist[i - 1][j] + 1, dist[i][j - 1] + 1)
    ops = []  # (kind, source position, target position), collected right to left
    i, j = n, m
    while i > 0 or j > 0:
        if i and j and dist[i][j] == dist[i - 1][j - 1] + (source[i - 1] != target[j - 1]):
            kind = "keep" if source[i - 1] == target[j - 1] else "substitute"
            i, j = i - 1, j - 1
        elif i and dist[i][j] == dist[i - 1][j] + 1:
            kind, i = "delete", i - 1
        else:
            kind, j = "insert", j - 1
        ops.append((kind, i, j))
    edits = []
    for changed, run in itertools.groupby(reversed(ops), key=lambda op: op[0] != "keep"):
        run = list(run)
        if not changed:
            continue
        pieces = [[op] for op in run] if all(op[0] == "substitute" for op in run) else [run]
        for piece in pieces:
            start, target_start = piece[0][1], piece[0][2]
            end = start + sum(kind != "insert" for kind, _, _ in piece)
            target_end = target_start + sum(kind != "delete" for kind, _, _ in piece)
            edits.append(Edit(start, end, tuple(target[target_start:target_end])))
    return edits


def normalize(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def refuse_task_prefix(entries: list[dict], origin: str) -> list[dict]:
    """`entries`, unless their inputs still carry the Hugging Face dataset's task prefix, which
    would be scored as an error to fix: entries never carry a prefix (the prompt adds it)."""
    prefixed = sum(isinstance(e, dict) and str(e.get("input", "")).startswith(HF_PREFIX) for e in entries)
    if prefixed:
        raise UserError(f"{origin}: {prefixed} of {len(entries)} inputs start with {HF_PREFIX!r}, the Hugging "
                        "Face dataset's task prefix. Entries no longer carry a prefix (the data manifest records "
                        "it and the prompt adds it): rebuild the file with `python -m correcteur data`, or strip "
                        "the prefix from its inputs.")
    return entries


def entry_texts(entry: dict, index: int = 0, response_key: str = "model_response") -> tuple[str, str, str]:
    """(input, reference, response) of an entry, normalised; `index` names it in errors."""
    texts = []
    for key in ("input", "output", response_key):
        value = entry.get(key) if isinstance(entry, dict) else None
        if not isinstance(value, str):
            hint = " (run `python -m correcteur respond` first)" if key == response_key else ""
            raise UserError(f"entry {index} has no text under {key!r}{hint}")
        texts.append(normalize(value))
    return texts[0], texts[1], texts[2]


class EntryStats(NamedTuple):
    """What the aggregate scores need from one entry."""

    response_distance: int  # lev(response, reference)
    copy_distance: int  # lev(input, reference)
    reference_length: int
    exact: bool
    unchanged: bool  # response == input
    correct_edits: int
    response_edits: int
    reference_edits: int


def entry_stats(source: str, reference: str, response: str) -> EntryStats:
    """The counts of one entry; a response equal to the input or to the reference (the copy
    and reference baselines) reuses what is already computed, which on long texts is slow."""
    wanted, copy_distance = reference_side(source, reference)
    if response in (source, reference):
        made = frozenset() if response == source else wanted
    else:
        made = frozenset(word_edits(words(source), words(response)))
    response_distance = copy_distance if response == source else levenshtein(response, reference)
    return EntryStats(response_distance, copy_distance, len(reference), response == reference,
                      response == source, len(wanted & made), len(made), len(wanted))


@functools.lru_cache(maxsize=8)
def reference_side(source: str, reference: str) -> tuple[frozenset[Edit], int]:
    """The edits the reference makes to the input, and its distance to it: the same for the
    model, the copy baseline and every setting guard tuning tries, and seconds of work on a
    long entry, so the last few are kept."""
    return frozenset(word_edits(words(source), words(reference))), levenshtein(source, reference)


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def aggregate(stats: list[EntryStats]) -> dict:
    """The scores of a group of entries (keys: `SCORE_KEYS`); None where a score is undefined.

    `error_reduction` is over the entries whose input differs from the reference, `harm_rate`
    over all entries, `clean_preserved` over the others. Precision and recall are micro
    averages over edits: precision is None when nothing was proposed, recall when nothing
    needed fixing; F0.5 = 1.25·tp / (1.25·tp + 0.25·missed + wrong), so it is 0 for the copy
    baseline and None only when there is no edit at all."""
    erroneous = [s for s in stats if s.copy_distance > 0]
    clean = [s for s in stats if s.copy_distance == 0]
    copy_total = sum(s.copy_distance for s in erroneous)
    tp = sum(s.correct_edits for s in stats)
    proposed = sum(s.response_edits for s in stats)
    needed = sum(s.reference_edits for s in stats)
    weight = 1 + BETA**2
    f_denominator = weight * tp + BETA**2 * (needed - tp) + (proposed - tp)
    return {
        "n": len(stats),
        "n_with_errors": len(erroneous),
        "n_clean": len(clean),
        "exact_match": _share([s.exact for s in stats]),
        "cer": statistics.fmean(s.response_distance / max(1, s.reference_length) for s in stats),
        "copy_cer": statistics.fmean(s.copy_distance / max(1, s.reference_length) for s in stats),
        "error_reduction": (1 - sum(s.response_distance for s in erroneous) / copy_total
                            if erroneous else None),
        "harm_rate": _share([s.response_distance > s.copy_distance for s in stats]),
        "clean_preserved": _share([s.unchanged for s in clean]),
        "precision": tp / proposed if proposed else None,
        "recall": tp / needed if needed else None,
        "f0_5": weight * tp / f_denominator if f_denominator else None,
    }


def score_entries(entries: list[dict]) -> dict:
    """Scores of entries with `input`, `output` (the reference) and `model_response`.

    Returns the keys of `SCORE_KEYS`, plus `per_error_type: {type: {same keys}}` when the
    entries carry `error_types` (an entry counts in each of its types; clean entries, whose
    list is empty, in none)."""
    if not entries:
        raise UserError("there are no entries to score: the file holds an empty list")
    stats = [entry_stats(*entry_texts(e, i)) for i, e in enumerate(entries)]
    scores = aggregate(stats)
    if any("error_types" in e for e in entries):
        types = sorted({t for e in entries for t in e.get("error_types") or ()})
        scores["per_error_type"] = {
            t: aggregate([s for s, e in zip(stats, entries, strict=True) if t in (e.get("error_types") or ())])
            for t in types
        }
    return scores


def _cell(value) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _rows_to_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header))]
    lines = ["  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in [header, *rows]]
    return "\n".join(lines)


def format_table(scores: dict, baselines: dict[str, dict] | None = None,
                 per_type_metric: str = "error_reduction") -> str:
    """The scores of the model next to those of each baseline, one column per system; then,
    when there are error types, `per_type_metric` per error type for every system."""
    systems = {"model": scores, **(baselines or {})}
    header = ["metric", *systems]
    table = _rows_to_text(header, [[key, *(_cell(s.get(key)) for s in systems.values())]
                                   for key in SCORE_KEYS])
    types = scores.get("per_error_type")
    if not types:
        return table
    rows = [[t, str(types[t]["n"]),
             *(_cell(s.get("per_error_type", {}).get(t, {}).get(per_type_metric)) for s in systems.values())]
            for t in types]
    return table + f"\n\n{per_type_metric} by error type\n" + _rows_to_text(["error type", "n", *systems], rows)


def plot_error_types(scores: dict, baselines: dict[str, dict] | None = None,
                     metric: str = "error_reduction", save_path: str | Path | None = None):
    """A grouped bar chart of `metric` per error type, one bar per system; returns the
    matplotlib Figure (shown by notebooks) and saves it when `save_path` is given."""
    from matplotlib.figure import Figure

    types = list(scores.get("per_error_type") or {})
    if not types:
        raise UserError("these entries carry no `error_types`: there is nothing to plot per type")
    systems = {"model": scores, **(baselines or {})}
    fig = Figure(figsize=(min(14, max(6, 0.9 * len(types) + 2)), 4.5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(systems)
    floor = -1.0 if metric == "error_reduction" else None  # below -1: more than doubles the errors
    for k, (name, system) in enumerate(systems.items()):
        values = [system.get("per_error_type", {}).get(t, {}).get(metric) for t in types]
        xs = [x + k * width for x in range(len(types))]
        shown = [math.nan if v is None else v if floor is None else max(v, floor) for v in values]
        ax.bar(xs, shown, width, label=name)
        for x, value in zip(xs, values, strict=True):  # a clipped bar says how far it goes
            if floor is not None and value is not None and value < floor:
                ax.annotate(f"{value:.1f}", (x, floor), ha="center", va="top", fontsize=7,
                            xytext=(0, -2), textcoords="offset points")
    if floor is not None:
        ax.set_ylim(floor - 0.15, 1.05)
    ax.axhline(0, color="black", linewidth=0.8)
    labels = [f"{t} (n={scores['per_error_type'][t]['n']})" for t in types]
    ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(types))], labels,
                  rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by error type (0: returning the input; bars below -1 clipped, value shown)")
    ax.legend()
    if save_path is not None:
        fig.savefig(save_path, dpi=120)
    return fig
