"""Text as words and edits, with no model in sight: word diffs, edit distances, answers in parts.

The guard, the metrics, the app and the command line all compare a text with its correction;
they do it with these functions, so that "an edit" means the same thing everywhere.

Long texts. An exact alignment costs time, and for the word edits memory, in the product of
the two lengths: a 5 MB entry would take days and terabytes. Up to a size (`EXACT_DIFF_CELLS`
token pairs for `diff_words`, `EXACT_CHAR_CELLS` character pairs for `levenshtein`,
`metrics.EXACT_WORD_CELLS` word pairs for the word edits) the plain algorithm runs on the whole
pair and the results are exactly what they always were. Above it, the texts are cut at anchors
they share (`matching_blocks`: their common start and end, the words found once on each side,
runs of words found once, and for text repeated whole a walk from one shared run to the next),
and only the regions between anchors (`differing_regions`) go through the plain algorithm,
while together they hold at most `alignment_budget` cells (about linear in the length); a
region beyond is counted as replaced whole. On texts that mostly agree the result is the same
as the whole table's; on texts that do not, it is still a valid alignment (a distance never
below the true one), found in seconds and a few hundred MB for 5 MB.
"""

from __future__ import annotations

import bisect
import difflib
import itertools
import operator
import re
from collections import Counter
from collections.abc import Callable

WORD_TOKEN = re.compile(r"\S+|\s+")
SPACED_WORD = re.compile(r"\S+\s*|\s+")  # a word and the spaces after it: one token, for distances

GuardFn = Callable[[str, str], str]  # (source, candidate) -> the text to keep
Part = tuple[str, str, str]  # a piece of a text, the model's answer to it, the gap that follows it
Block = tuple[int, int, int]  # a[i:i + size] == b[j:j + size], as (i, j, size)
Region = tuple[int, int, int, int]  # a[i1:i2] stands where b[j1:j2] does, as (i1, i2, j1, j2)

EXACT_DIFF_CELLS = 4_000_000  # diff_words: difflib on the whole texts up to this many token pairs
EXACT_CHAR_CELLS = 10_000_000  # levenshtein: one table up to this many character pairs
CELLS_PER_TOKEN = 2  # cells the regions of a long pair may add to its budget, per token (or character)
SMALL_REGION = 16  # token pairs: a region this small is not cut further
ANCHOR_RUN = 6  # tokens in a row that anchor repeated text
RESYNC_REACH = 4096  # tokens ahead on each side where a walk looks for its next anchor


def diff_words(source: str, corrected: str) -> list[tuple[str, str]]:
    """Word-level changes as (tag, text) runs, tag in {"equal", "delete", "insert"}.

    Words and the whitespace between them are separate tokens, so joining the "equal" and
    "delete" runs gives back `source` and joining "equal" and "insert" gives `corrected`.
    Long texts (over `EXACT_DIFF_CELLS` token pairs) are diffed region by region."""
    old, new = WORD_TOKEN.findall(source), WORD_TOKEN.findall(corrected)
    if len(old) * len(new) <= EXACT_DIFF_CELLS:
        opcodes = difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
    else:
        opcodes = _opcodes_by_region(old, new)
    runs: list[tuple[str, str]] = []
    for tag, i1, i2, j1, j2 in opcodes:
        if tag == "equal":
            runs.append(("equal", "".join(new[j1:j2])))
            continue
        if i2 > i1:
            runs.append(("delete", "".join(old[i1:i2])))
        if j2 > j1:
            runs.append(("insert", "".join(new[j1:j2])))
    return runs


def _opcodes_by_region(old: list[str], new: list[str]) -> list[tuple[str, int, int, int, int]]:
    """difflib's opcodes for long token lists: anchors are equal, and each region between them
    is diffed alone while all of them together hold at most `EXACT_DIFF_CELLS` token pairs,
    then replaced whole."""
    opcodes: list[tuple[str, int, int, int, int]] = []

    def add(tag: str, i1: int, i2: int, j1: int, j2: int) -> None:
        if tag == "equal" and opcodes and opcodes[-1][0] == "equal":  # an anchor beside a match
            tag, i1, _, j1, _ = opcodes.pop()
        opcodes.append((tag, i1, i2, j1, j2))

    i = j = 0
    budget = alignment_budget(EXACT_DIFF_CELLS, len(old) + len(new))
    for a, b, size in [*matching_blocks(old, new), (len(old), len(new), 0)]:
        cells = (a - i) * (b - j)
        if cells == 0 and (a > i or b > j):
            add("delete" if b == j else "insert", i, a, j, b)
        elif cells == 1 or cells > budget:  # one token for another (a region's ends differ), or too big
            add("replace", i, a, j, b)
        elif cells:
            budget -= cells
            matcher = difflib.SequenceMatcher(None, old[i:a], new[j:b], autojunk=False)
            for tag, i1, i2, j1, j2 in matcher.get_opcodes():
                add(tag, i + i1, i + i2, j + j1, j + j2)
        if size:
            add("equal", a, a + size, b, b + size)
        i, j = a + size, b + size
    return opcodes


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
    a finger (optimal string alignment): "enfnats" is one typo away from "enfants", not two.
    Three rows of the table are kept: memory grows with the length, not its square."""
    before, previous = [], list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i]
        for j in range(1, len(b) + 1):
            best = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                best = min(best, before[j - 2] + 1)
            row.append(best)
        before, previous = previous, row
    return previous[-1]


def edits_of(pieces: list[DiffPiece]) -> list[tuple[str, str, str]]:
    """The edits among the pieces, in order: an edit's number is its index here."""
    return [piece for piece in pieces if piece[0] == "edit"]


def levenshtein(a: str, b: str) -> int:
    """Character edit distance (insertions, deletions, substitutions all cost 1).

    The common prefix and suffix are skipped first, which makes near-identical sentences (the
    usual case here) cost little more than a comparison. When what is left is over
    `EXACT_CHAR_CELLS` character pairs, the distance is the sum over the `differing_regions`
    of the two texts' words, each region exact while all of them together hold at most
    `alignment_budget` character pairs and counted as rewritten whole beyond: an upper bound,
    exact unless the best alignment crosses an anchor (for texts that mostly agree, it does not)."""
    a, b = _trimmed(a, b)
    if len(a) * len(b) <= EXACT_CHAR_CELLS:
        return _levenshtein_table(a, b)
    old, new = SPACED_WORD.findall(a), SPACED_WORD.findall(b)
    distance, budget = 0, alignment_budget(EXACT_CHAR_CELLS, len(a) + len(b))
    for i1, i2, j1, j2 in differing_regions(old, new):
        x, y = _trimmed("".join(old[i1:i2]), "".join(new[j1:j2]))
        if len(x) * len(y) <= budget:
            budget -= len(x) * len(y)
            distance += _levenshtein_table(x, y)
        else:
            distance += max(len(x), len(y))
    return min(distance, max(len(a), len(b)))  # rewriting the longer text whole is never worse


def _trimmed(a: str, b: str) -> tuple[str, str]:
    """`a` and `b` less their common prefix and suffix, which an optimal alignment keeps."""
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    return a[start:end_a], b[start:end_b]


def _levenshtein_table(a: str, b: str) -> int:
    """The dynamic programme, two rows at a time."""
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


def alignment_budget(exact_cells: int, length: int) -> int:
    """The cells the exact alignments of a long pair's regions may hold in all: about linear in
    its length, so that texts that differ everywhere cannot take quadratic time."""
    return exact_cells + CELLS_PER_TOKEN * length


def matching_blocks(a: list[str], b: list[str]) -> list[Block]:
    """Runs of tokens `a` and `b` share, in order on both sides: the anchors that cut a long
    alignment into short ones, found in about linear time when the texts mostly agree.

    A region is cut at its common start and end, then at the runs of `ANCHOR_RUN` tokens it
    holds exactly once on each side, in the longest order they agree on (patience diff), or
    failing that at such single tokens (a run rarely matches by chance, a word may: where only
    a few are found once, as in a text of repeated sentences, they are often mere namesakes).
    A region with neither, as text repeated whole is, is walked from its start, each difference
    skipped to the nearest run of `ANCHOR_RUN` tokens both sides share (`_resync`). Regions of
    at most `SMALL_REGION` token pairs, and the stretches between anchors, are left for an
    exact alignment."""
    blocks: list[Block] = []
    todo = [(0, len(a), 0, len(b))]
    while todo:
        alo, ahi, blo, bhi = _stripped(a, b, *todo.pop(), blocks)
        if (ahi - alo) * (bhi - blo) <= SMALL_REGION:
            continue
        long_enough = min(ahi - alo, bhi - blo) >= 4 * ANCHOR_RUN  # to hold runs worth finding
        anchors = ((long_enough and _unique_anchors(a, b, alo, ahi, blo, bhi, ANCHOR_RUN))
                   or _unique_anchors(a, b, alo, ahi, blo, bhi, 1))
        if not anchors:
            todo.extend(_walk(a, b, alo, ahi, blo, bhi, blocks))
            continue
        for i, j, size in _runs(anchors):
            blocks.append((i, j, size))
            if i > alo or j > blo:
                todo.append((alo, i, blo, j))
            alo, blo = i + size, j + size
        todo.append((alo, ahi, blo, bhi))
    return _merged(sorted(blocks))


def differing_regions(a: list[str], b: list[str]) -> list[Region]:
    """The regions between `matching_blocks`, where `a` and `b` differ (one side may be empty)."""
    regions, i, j = [], 0, 0
    for block_i, block_j, size in [*matching_blocks(a, b), (len(a), len(b), 0)]:
        if block_i > i or block_j > j:
            regions.append((i, block_i, j, block_j))
        i, j = block_i + size, block_j + size
    return regions


def _stripped(a: list[str], b: list[str], alo: int, ahi: int, blo: int, bhi: int,
              blocks: list[Block]) -> Region:
    """The region less its common start and end, which go to `blocks`."""
    size = _common_start(a, b, alo, ahi, blo, bhi)
    if size:
        blocks.append((alo, blo, size))
        alo, blo = alo + size, blo + size
    size = 0
    while ahi - size > alo and bhi - size > blo and a[ahi - size - 1] == b[bhi - size - 1]:
        size += 1
    if size:
        blocks.append((ahi - size, bhi - size, size))
    return alo, ahi - size, blo, bhi - size


def _common_start(a: list[str], b: list[str], alo: int, ahi: int, blo: int, bhi: int) -> int:
    size = 0
    while alo + size < ahi and blo + size < bhi and a[alo + size] == b[blo + size]:
        size += 1
    return size


def _grams(tokens: list[str], lo: int, hi: int, size: int) -> list:
    """The runs of `size` tokens starting at lo, lo + 1, ...: the tokens themselves for 1, else
    a hash of each run (checked again where it matters: `_unique_anchors`)."""
    if size == 1:
        return tokens[lo:hi]
    if hi - lo < size:
        return []
    return list(map(hash, zip(*(tokens[lo + k:hi - size + 1 + k] for k in range(size)), strict=True)))


def _unique_anchors(a: list[str], b: list[str], alo: int, ahi: int, blo: int, bhi: int,
                    size: int) -> list[tuple[int, int]]:
    """(i, j) of the runs of `size` tokens found once in a[alo:ahi] and once in b[blo:bhi],
    the longest series of them in the same order on both sides."""
    grams_a, grams_b = _grams(a, alo, ahi, size), _grams(b, blo, bhi, size)
    once = _once(grams_a) & _once(grams_b)
    if not once:
        return []
    where_b = dict(zip(grams_b, itertools.count(blo), strict=False))
    shared = list(map(once.__contains__, grams_a))  # C loops: 1M tokens take a tenth of a second
    pairs = list(zip(itertools.compress(itertools.count(alo), shared),
                     map(where_b.__getitem__, itertools.compress(grams_a, shared)), strict=True))
    return [(i, j) for i, j in _increasing(pairs) if a[i] == b[j]]  # a run's hash may collide


def _once(items: list) -> set:
    """The items found exactly once (the filter runs in C: this is the hot loop on long texts)."""
    counts = Counter(items)
    return set(itertools.compress(counts, map((1).__eq__, counts.values())))


def _runs(anchors: list[tuple[int, int]]) -> list[Block]:
    """Increasing anchors as blocks, the ones next to each other joined."""
    runs: list[Block] = []
    for i, j in anchors:
        if runs and runs[-1][0] + runs[-1][2] == i and runs[-1][1] + runs[-1][2] == j:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((i, j, 1))
    return runs


def _increasing(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The longest subsequence of `pairs` (in increasing i) whose j increase too."""
    if all(map(operator.lt, (j for _, j in pairs), (j for _, j in pairs[1:]))):
        return pairs  # the usual case: texts in the same order
    tails: list[int] = []  # the smallest j that ends an increasing series of each length
    ends: list[int] = []  # the index in `pairs` of that series' last pair
    back = [-1] * len(pairs)  # the pair before each one in its series
    for k, (_, j) in enumerate(pairs):
        length = bisect.bisect_left(tails, j)
        if length:
            back[k] = ends[length - 1]
        if length == len(tails):
            tails.append(j)
            ends.append(k)
        else:
            tails[length], ends[length] = j, k
    series, k = [], ends[-1]
    while k >= 0:
        series.append(pairs[k])
        k = back[k]
    return series[::-1]


def _walk(a: list[str], b: list[str], alo: int, ahi: int, blo: int, bhi: int,
          blocks: list[Block]) -> list[Region]:
    """Match a region from its start, skipping each difference to the nearest shared run
    (`_resync`), its matches going to `blocks`; the region left when a difference has no
    end in sight ([] when there is none, or the walk could not start)."""
    i, j = alo, blo
    while i < ahi and j < bhi:
        found = _resync(a, b, i, ahi, j, bhi)
        if found is None:
            return [(i, ahi, j, bhi)] if (i, j) != (alo, blo) else []
        i, j = found
        size = _common_start(a, b, i, ahi, j, bhi)
        blocks.append((i, j, size))
        i, j = i + size, j + size
    return []


def _resync(a: list[str], b: list[str], i: int, ahi: int, j: int, bhi: int) -> tuple[int, int] | None:
    """The nearest (i', j') (least i' - i + j' - j) where `ANCHOR_RUN` tokens match again,
    looked for ever farther, up to `RESYNC_REACH` tokens; None if there is none."""
    reach = 16
    while True:
        end_a, end_b = min(ahi, i + reach), min(bhi, j + reach)
        starts: dict[tuple[str, ...], int] = {}
        for k in range(end_b - ANCHOR_RUN, j - 1, -1):  # backwards: the nearest start wins
            starts[tuple(b[k:k + ANCHOR_RUN])] = k
        best = None
        for k in range(i, end_a - ANCHOR_RUN + 1):
            if best is not None and k - i >= best[0] - i + best[1] - j:
                break
            found = starts.get(tuple(a[k:k + ANCHOR_RUN]))
            if found is not None and (best is None or k + found < best[0] + best[1]):
                best = (k, found)
        if best is not None or reach >= RESYNC_REACH or (end_a == ahi and end_b == bhi):
            return best
        reach *= 4


def _merged(blocks: list[Block]) -> list[Block]:
    """Sorted blocks with the ones that touch joined."""
    merged: list[Block] = []
    for i, j, size in blocks:
        if merged and merged[-1][0] + merged[-1][2] == i and merged[-1][1] + merged[-1][2] == j:
            merged[-1] = (merged[-1][0], merged[-1][1], merged[-1][2] + size)
        else:
            merged.append((i, j, size))
    return merged
