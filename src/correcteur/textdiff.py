"""Text as words and edits, with no model in sight: word diffs, edit distances, answers in parts.

The guard, the metrics, the app and the command line all compare a text with its correction;
they do it with these functions, so that "an edit" means the same thing everywhere.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable

WORD_TOKEN = re.compile(r"\S+|\s+")

GuardFn = Callable[[str, str], str]  # (source, candidate) -> the text to keep
Part = tuple[str, str, str]  # a piece of a text, the model's answer to it, the gap that follows it


def diff_words(source: str, corrected: str) -> list[tuple[str, str]]:
    """Word-level changes as (tag, text) runs, tag in {"equal", "delete", "insert"}.

    Words and the whitespace between them are separate tokens, so joining the "equal" and
    "delete" runs gives back `source` and joining "equal" and "insert" gives `corrected`."""
    old, new = WORD_TOKEN.findall(source), WORD_TOKEN.findall(corrected)
    runs = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            runs.append(("equal", "".join(new[j1:j2])))
            continue
        if i2 > i1:
            runs.append(("delete", "".join(old[i1:i2])))
        if j2 > j1:
            runs.append(("insert", "".join(new[j1:j2])))
    return runs


def format_diff(runs: list[tuple[str, str]]) -> str:
    """wdiff's notation: [-removed-]{+added+}."""
    marks = {"equal": "{}", "delete": "[-{}-]", "insert": "{{+{}+}}"}
    return "".join(marks[tag].format(text) for tag, text in runs)


def join_parts(parts: list[Part], guard: GuardFn | None = None) -> str:
    """A whole text's answer from its parts' answers, each guarded on its own when a guard is
    given (the model answered, and scores, each part in a context of its own)."""
    return "".join((guard(part, answer) if guard and part.strip() else answer) + gap
                   for part, answer, gap in parts)


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
    a finger (optimal string alignment): "enfnats" is one typo away from "enfants", not two."""
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


def levenshtein(a: str, b: str) -> int:
    """Character edit distance (insertions, deletions, substitutions all cost 1).

    Two rows of the dynamic programme; the common prefix and suffix are skipped first, which
    makes near-identical sentences (the usual case here) cost little more than a comparison."""
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        left = i
        current = [left]
        for char_b, diagonal, up in zip(b, previous, previous[1:], strict=False):
            if char_a != char_b:  # else the diagonal (keep the character) is always cheapest
                if up < diagonal:
                    diagonal = up
                if left < diagonal:
                    diagonal = left
                diagonal += 1
            left = diagonal
            current.append(left)
        previous = current
    return previous[-1]
