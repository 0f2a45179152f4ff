"""Corrections as data: where an edit starts, what it replaces, with what, who proposed it, how
sure it was, and a short French message that says what kind of error it fixes.

Editors (LanguageTool clients, `correct --json`) need edits, not a corrected copy: they
underline a stretch and offer its replacement. `edits_between` reads them off a text and its
correction with the word diff of `textdiff`, so an edit here is the same edit the guard judges;
`apply` puts them back, and `apply(text, edits_between(text, fixed)) == fixed` always holds.

Offsets and lengths count Python characters (code points). LanguageTool counts UTF-16 code
units; the server converts at its boundary (`utf16_index`), nowhere else.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from correcteur.textdiff import edit_pieces, typo_distance

MODEL_SOURCE = "modèle"
Span = tuple[int, int]  # [start, end) in characters; start == end marks a point that no edit may cross


@dataclass(frozen=True)
class Edit:
    """Replace `length` characters at `offset` by `replacement`."""

    offset: int
    length: int
    replacement: str
    source: str = MODEL_SOURCE  # who proposed it: "modèle", later "grammalecte", "lexique", ...
    confidence: float | None = None  # the guard's margin in nats, when it was measured
    message: str = ""  # short, in French: "Accent", "Accord en genre ou en nombre", ...
    kind: str = ""  # the key of `KINDS` the message comes from

    @property
    def end(self) -> int:
        return self.offset + self.length

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# kind -> the message users read. The order of `classify`'s tests decides between them.
KINDS = {
    "majuscule": "Majuscule ou minuscule",
    "accent": "Accent",
    "ponctuation": "Ponctuation ou espacement",
    "homophone": "Confusion d'homophones",
    "conjugaison": "Terminaison du verbe",
    "accord": "Accord en genre ou en nombre",
    "frappe": "Faute de frappe",
    "manquant": "Mot manquant",
    "superflu": "Mot en trop",
    "correction": "Correction",
}
HOMOPHONES = [
    {"a", "à"}, {"ou", "où"}, {"et", "est"}, {"son", "sont"}, {"on", "ont"}, {"ce", "se"},
    {"ces", "ses", "c'est", "s'est"}, {"la", "là", "l'a"}, {"sa", "ça"}, {"mais", "mes", "met", "mets"},
    {"leur", "leurs"}, {"quel", "quelle", "quels", "quelles", "qu'elle", "qu'elles"},
    {"peu", "peut", "peux"}, {"ni", "n'y"}, {"si", "s'y"}, {"sans", "s'en", "c'en"}, {"dans", "d'en"},
    {"quand", "quant", "qu'en"}, {"tout", "tous"}, {"près", "prêt"}, {"voir", "voire"},
    {"censé", "sensé"}, {"cour", "cours", "court"}, {"verre", "vert", "vers", "ver"},
]
HOMOPHONE_OF = {word: index for index, group in enumerate(HOMOPHONES) for word in group}
VERB_ENDING = re.compile(r"(er|ez|é|ée|és|ées|ai|ais|ait|aient)$")
AGREEMENT_ENDING = re.compile(r"(es|s|x|e|nt)$")
AGREEMENT_SUFFIXES = {"s", "x", "e", "es", "nt", "ent"}
LETTERS = re.compile(r"[\w']+")


def _bare(text: str) -> str:
    """Lower case without accents: what a word is when only its accents may be wrong."""
    return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if not unicodedata.combining(c))


def classify(removed: str, inserted: str) -> str:
    """The kind of error an edit fixes, by simple tests on the two texts (a hint for the
    reader, not a linguistic analysis)."""
    old, new = removed.strip(), inserted.strip()
    old_words, new_words = LETTERS.findall(old.lower()), LETTERS.findall(new.lower())
    single = len(old_words) == len(new_words) == 1
    if single and old_words[0] in HOMOPHONE_OF and HOMOPHONE_OF[old_words[0]] == HOMOPHONE_OF.get(new_words[0]):
        return "homophone"
    if old.lower() == new.lower() and old != new:
        return "majuscule"
    if _bare(old) == _bare(new):
        return "accent" if old.lower() != new.lower() else "ponctuation"
    if old_words == new_words:
        return "ponctuation"
    if _within(old_words, new_words):
        return "manquant"
    if _within(new_words, old_words):
        return "superflu"
    if single:
        a, b = old_words[0], new_words[0]
        short, long = sorted((a, b), key=len)
        if AGREEMENT_ENDING.sub("", a) == AGREEMENT_ENDING.sub("", b) or (
                long.startswith(short) and long[len(short):] in AGREEMENT_SUFFIXES):
            return "accord"
        if VERB_ENDING.search(a) and VERB_ENDING.search(b) and VERB_ENDING.sub("", a) == VERB_ENDING.sub("", b):
            return "conjugaison"
        if typo_distance(a, b) <= 2:
            return "frappe"
    return "correction"


def _within(few: list[str], many: list[str]) -> bool:
    """Whether `many` is `few` with words added (in order)."""
    words = iter(many)
    return len(many) > len(few) and all(word in words for word in few)


def touches(start: int, end: int, spans: Iterable[Span]) -> bool:
    """Whether replacing source[start:end] (an insertion when start == end) changes a span:
    it overlaps it, is inserted strictly inside it, or crosses a point span."""
    for s, e in spans:
        if s == e:
            if start < s < end:
                return True
        elif (start < e and s < end) or (start == end and s < start < e):
            return True
    return False


def edits_between(source: str, corrected: str, protected: Sequence[Span] = (),
                  origin: str = MODEL_SOURCE) -> list[Edit]:
    """The word edits that turn `source` into `corrected`, in order, each with its message.
    Punctuation both sides share at an edit's ends is left out of it (`trimmed`).

    A pure insertion has nothing to underline, so it takes in the word beside it ("sais" ->
    "ne sais"), the next one if it can, else the previous one, never one of the `protected`
    spans nor a word another edit replaces; with no such word it stays an insertion."""
    raw: list[tuple[int, str, str]] = []  # (offset, removed, inserted)
    position = 0
    for piece in edit_pieces(source, corrected):
        if piece[0] == "equal":
            position += len(piece[1])
        else:
            raw.append((position, piece[1], piece[2]))
            position += len(piece[1])
    edits = []
    for number, (offset, removed, inserted) in enumerate(raw):
        offset, removed, inserted = trimmed(offset, removed, inserted)
        if touches(offset, offset + len(removed), protected):  # only its changed letters miss them
            offset, removed, inserted = trimmed(offset, removed, inserted, letters=True)
        if not removed:
            low = edits[-1].end if edits else 0
            high = raw[number + 1][0] if number + 1 < len(raw) else len(source)
            offset, removed, inserted = _widened(source, offset, inserted, low, high, protected)
        kind = classify(removed, inserted)
        edits.append(Edit(offset, len(removed), inserted, origin, None, KINDS[kind], kind))
    return edits


def trimmed(offset: int, removed: str, inserted: str, letters: bool = False) -> tuple[int, str, str]:
    """The edit less the characters both sides share at its ends: punctuation and spaces only
    ("pome." -> "pomme." underlines "pome", not its period), or any with `letters` (what the
    edit really changes: "3e" -> "3ème" leaves the 3 alone)."""
    def shared(a: str, b: str) -> bool:
        return a == b and (letters or not a.isalnum())

    while removed and inserted and shared(removed[-1], inserted[-1]):
        removed, inserted = removed[:-1], inserted[:-1]
    while removed and inserted and shared(removed[0], inserted[0]):
        offset, removed, inserted = offset + 1, removed[1:], inserted[1:]
    return offset, removed, inserted


def _widened(source: str, at: int, inserted: str, low: int, high: int,
             protected: Sequence[Span]) -> tuple[int, str, str]:
    """An insertion at `at` with the word after it (or before it) in source[low:high]."""
    end = at
    while end < high and not source[end].isspace():
        end += 1
    if end > at and not touches(at, end, protected):
        return at, source[at:end], inserted + source[at:end]
    start = at
    while start > low and not source[start - 1].isspace():
        start -= 1
    if start < at and not touches(start, at, protected):
        return start, source[start:at], source[start:at] + inserted
    return at, "", inserted


def apply(text: str, edits: Iterable[Edit]) -> str:
    """`text` with every edit applied; they may come in any order but may not overlap."""
    out, position = [], 0
    for edit in sorted(edits, key=lambda e: (e.offset, e.length)):
        if edit.offset < position or edit.end > len(text) or edit.offset < 0:
            raise ValueError(f"edit {edit} overlaps another one or falls outside the text")
        out += [text[position:edit.offset], edit.replacement]
        position = edit.end
    return "".join(out) + text[position:]


def utf16_index(text: str) -> Callable[[int], int]:
    """A function from a character offset in `text` to the same offset in UTF-16 code units
    (characters beyond U+FFFF, such as most emoji, count two)."""
    astral = [i for i, c in enumerate(text) if ord(c) > 0xFFFF]
    return lambda offset: offset + bisect.bisect_left(astral, offset)
