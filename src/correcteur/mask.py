"""Text the corrector must not touch: URLs, e-mail addresses, code, numbers, the user's own words.

A model trained on everyday French "corrects" `https://exemple.fr/Page` into "page", a variable
name into a French word, 1 000 into "mille", and a name it does not know into one it does.
`protected_spans` finds these stretches; `protect` puts back every edit of the model's answer
that touches one, before the guard judges what is left, so they come back exactly as written.

The model still reads them (a number decides an agreement: "3 enfant" → "3 enfants"); it is the
edits that are masked. A piece of text made only of protected stretches, such as a line of a
code block, is not sent to the model at all (`covered`).

A personal dictionary is a UTF-8 file with one word (or expression) per line; blank lines and
lines starting with `#` are skipped. Its entries are matched exactly, as whole words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from correcteur.edits import Span, touches, trimmed
from correcteur.errors import UserError
from correcteur.textdiff import Part, apply_edits, edit_pieces

FENCE = re.compile(r"^[ \t]*(```|~~~)")
PATTERNS = {
    # a fenced block, to its closing fence or to the end of the text (Markdown shows it so)
    "code block": re.compile(r"^[ \t]*(```|~~~).*?(?:^[ \t]*\1[^\n]*$|\Z)", re.M | re.S),
    "code span": re.compile(r"`[^`\n]+`"),
    "url": re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>\"]+?(?=[.,;:!?)\]»\"']*(?:\s|$))", re.I),
    "e-mail": re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"),
    "number": re.compile(r"\d+(?:[.,:/h\u00a0\u202f-]\d+)*"),
}


def load_dictionary(path: str | Path) -> frozenset[str]:
    """The words of a personal dictionary file (see the module's docstring)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no such dictionary file: {path}") from None
    except IsADirectoryError:
        raise UserError(f"the dictionary {path} is a folder: give a text file, one word per line") from None
    if b"\x00" in data:
        raise UserError(f"the dictionary {path} holds binary data: give a UTF-8 text file, one word per line")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"the dictionary {path} is not UTF-8 text (invalid byte at offset {error.start})") from None
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


def protected_spans(text: str, dictionary: Iterable[str] = ()) -> list[Span]:
    """The stretches of `text` no edit may touch, sorted and merged."""
    spans = [m.span() for pattern in PATTERNS.values() for m in pattern.finditer(text)]
    words = sorted(dictionary, key=len, reverse=True)  # the longest entry wins where two start together
    if words:
        pattern = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, words)) + r")(?!\w)")
        spans += [m.span() for m in pattern.finditer(text)]
    return merged(spans)


def merged(spans: Iterable[Span]) -> list[Span]:
    """Sorted spans, overlapping or touching ones joined (point spans are kept as they are)."""
    out: list[Span] = []
    for start, end in sorted(spans):
        last = out[-1] if out else None
        if last and (start < last[1] or (start == last[1] and start < end and last[0] < last[1])):
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((start, end))
    return out


def within(spans: Iterable[Span], start: int, end: int) -> list[Span]:
    """The spans that meet text[start:end], cut to it and counted from `start`."""
    return [(max(s, start) - start, min(e, end) - start) for s, e in spans
            if (s < end and e > start) or (s == e and start <= s <= end)]


def covered(text: str, spans: Iterable[Span]) -> bool:
    """Whether every non-space character of `text` lies in a span (nothing to correct)."""
    position = 0
    for start, end in spans:
        if text[position:start].strip():
            return False
        position = max(position, end)
    return not text[position:].strip()


def protect(source: str, candidate: str, spans: list[Span]) -> str:
    """`candidate` with every edit that changes a character of a protected span of `source`
    (or inserts inside one, or crosses a point span) undone."""
    if not spans or source == candidate:
        return candidate
    pieces = edit_pieces(source, candidate)
    kept, number, position = set(), 0, 0
    for piece in pieces:
        if piece[0] == "equal":
            position += len(piece[1])
            continue
        start, removed, inserted = trimmed(position, piece[1], piece[2], letters=True)
        if not (touches(start, start + len(removed), spans)  # what the edit really changes
                or not removed and glued(source, start, inserted, spans)):
            kept.add(number)
        position += len(piece[1])
        number += 1
    return apply_edits(pieces, kept)


def glued(source: str, at: int, inserted: str, spans: list[Span]) -> bool:
    """Whether inserting at a span's edge would lengthen its word ("10h30" -> "10h300")."""
    return any(s < e and ((at == e and source[e - 1].isalnum() and inserted[:1].isalnum())
                          or (at == s and source[s].isalnum() and inserted[-1:].isalnum())) for s, e in spans)


def protect_parts(parts: list[Part], spans: list[Span]) -> list[Part]:
    """`protect` for the answers of a text cut into parts; `spans` count from the text's start."""
    out, start = [], 0
    for part, answer, gap in parts:
        out.append((part, protect(part, answer, within(spans, start, start + len(part))), gap))
        start += len(part) + len(gap)
    return out
