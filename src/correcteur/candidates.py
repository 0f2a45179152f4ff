"""Candidate edits for a sentence, from every source the project has: the proposals half of
"rules and lexicon propose, the fine-tuned model disposes" (`choose.py` disposes).

Each source knows something the model cannot learn from 2,767 sentences:

- `grammar`: every suggestion of Grammalecte's rules (agreement, conjugation, confusions);
- `speller`: Grammalecte's speller for the words it flags as unknown;
- `lexicon`: words of the French word list one typo away from an unknown word, most frequent first;
- `accent`: the same word with other accents, when the word list knows it (pèche → pêche);
- `homophone`: confusion sets (a/à, ces/ses/c'est/s'est, ...) and Grammalecte's homophone table;
- `variant`: agreement and verb-ending forms one sound away (enfant → enfants, aller → allé);
- `elision`: le arbre → l'arbre, que il → qu'il;
- `compound`: words the word list knows joined (peut être → peut-être, long temps → longtemps)
  or an unknown word split in two known ones (avecune → avec une);
- `model`: what the fine-tuned model itself answered.

A candidate is a span of the text and its replacement; nothing here decides whether it is right.
Without Grammalecte (`grammalecte_checker()` is None) the other sources still propose.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import math
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from correcteur.augment import (
    HOMOPHONE_OF,
    INVARIABLE,
    agreement_variants,
    french_lexicon,
    match_case,
    verb_ending_variants,
)
from correcteur.textdiff import edit_pieces, typo_distance

SOURCES = ("grammar", "speller", "lexicon", "accent", "homophone", "variant", "elision", "compound", "model")
SYSTEM_PACKAGES = [Path("/usr/lib/python3/dist-packages"), Path("/usr/share/grammalecte")]
# Typographic rules that would "correct" the project's conventions rather than spelling or
# grammar: straight apostrophe (apos), plain spaces before ? ! : ; (nbsp) and units (unit),
# spacing (esp) and superscript ordinals (typo).
TYPOGRAPHIC_OPTIONS = ("apos", "nbsp", "unit", "esp", "typo")
PLAIN_WORD = re.compile(r"[^\W\d_]+")
ELIDED = re.compile(r"(?<![\w'’])[^\W\d_]{1,3}['’][^\W\d_]+")  # c'est, qu'en, n'y
ELIDED_FORMS = {w.split("'")[1] for w in HOMOPHONE_OF if "'" in w}
ELIDABLE = {"le": "l'", "la": "l'", "de": "d'", "que": "qu'", "je": "j'", "me": "m'", "te": "t'",
            "se": "s'", "ne": "n'", "ce": "c'", "jusque": "jusqu'", "lorsque": "lorsqu'", "puisque": "puisqu'"}
ELISION = re.compile(r"(?<![\w'’])(" + "|".join(ELIDABLE) + r") (?=[aeiouyàâéèêëîïôûœh])", re.IGNORECASE)
ACCENTED = {"a": "àâ", "e": "éèêë", "i": "îï", "o": "ô", "u": "ùûü", "c": "ç"}
MAX_PER_SPAN = 6  # candidates one source may propose for one span (the most likely first)
WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")  # c'est, peut-être: a word as a compound's part
MAX_SPLITS = 3  # ways to split one unknown word, the most frequent parts first


@dataclass(frozen=True)
class Candidate:
    """Replace text[start:end] with `replacement`; `source` is one of `SOURCES`."""

    start: int
    end: int
    replacement: str
    source: str
    message: str = ""

    def apply(self, text: str) -> str:
        return text[:self.start] + self.replacement + text[self.end:]


# ---------------------------------------------------------------------------- Grammalecte


def import_grammalecte():
    """The `grammalecte` package: importable as it is (pip), or Debian's, loaded from its folder.

    Debian's `python3-grammalecte` lives in the system Python's dist-packages; a virtual
    environment imports that one package from its folder (its imports are all relative),
    without putting the system's dist-packages on `sys.path`."""
    try:
        import grammalecte
    except ImportError:
        pass
    else:
        return grammalecte
    folder = next((f / "grammalecte" for f in SYSTEM_PACKAGES if (f / "grammalecte" / "__init__.py").is_file()), None)
    if folder is None:
        return None
    spec = importlib.util.spec_from_file_location("grammalecte", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["grammalecte"] = module  # before running it: its submodules import it by name
    try:
        spec.loader.exec_module(module)
    except Exception:  # a broken install counts as none
        del sys.modules["grammalecte"]
        return None
    return module


@functools.cache
def grammalecte_checker():
    """A Grammalecte checker with typographic rules off, or None when it isn't installed."""
    grammalecte = import_grammalecte()
    if grammalecte is None:
        return None
    checker = grammalecte.GrammarChecker("fr")
    for option in TYPOGRAPHIC_OPTIONS:
        checker.gce.setOption(option, False)
    return checker


def required_checker():
    checker = grammalecte_checker()
    if checker is None:
        raise RuntimeError("Grammalecte is not installed (Debian: apt-get install python3-grammalecte)")
    return checker


def grammalecte_errors(text: str) -> list[dict]:
    """Grammar and spelling errors Grammalecte flags in `text` (typography ignored)."""
    grammar, spelling = required_checker().getParagraphErrors(text)
    return list(grammar) + list(spelling)


def speller_suggestions(word: str) -> list[str]:
    return [s for group in required_checker().getSpellChecker().suggest(word) for s in group]


def grammalecte_candidates(text: str) -> list[Candidate]:
    """Every suggestion for every error Grammalecte flags (none when it is not installed).
    Suggestions follow the project's straight-apostrophe convention."""
    if grammalecte_checker() is None:
        return []
    found = []
    for error in grammalecte_errors(text):
        start, end = error["nStart"], error["nEnd"]
        if error.get("sType") == "WORD":
            source, suggestions = "speller", speller_suggestions(text[start:end])
        else:
            source, suggestions = "grammar", error.get("aSuggestions") or []
        message = error.get("sMessage", "")
        found += [Candidate(start, end, s.replace("’", "'"), source, message)
                  for s in list(dict.fromkeys(suggestions))[:MAX_PER_SPAN]]
    return found


@functools.cache
def grammalecte_homophones(word: str) -> tuple[str, ...]:
    """Words Grammalecte's phonetic table says sound like `word` (empty without Grammalecte)."""
    if grammalecte_checker() is None:
        return ()
    from grammalecte.fr import phonet

    return tuple(phonet.getSimil(word) or ())


def table_homophones(word: str, limit: int = 3) -> list[str]:
    """The most frequent known words of Grammalecte's table that sound like `word` and are at
    most two typos from it (conte → compte, soi → soit; not les → laid): the whole table
    would give the scorer dozens of sentences to read for each one it keeps."""
    counts = word_frequencies()
    near = [w for w in grammalecte_homophones(word)
            if w != word and w in counts and typo_distance(w, word) <= 2]
    return sorted(near, key=lambda w: -counts[w])[:limit]


# ---------------------------------------------------------------------------- the word list


@functools.cache
def word_frequencies() -> dict[str, int]:
    """pyspellchecker's French counts for the words of `french_lexicon` (their ranking)."""
    from spellchecker import SpellChecker

    lexicon = french_lexicon()
    counts = SpellChecker(language="fr").word_frequency.dictionary
    return {word: counts[word] for word in lexicon}


@functools.cache  # asked again of every candidate for each setting the tuning replays
def frequency_shift(candidate: Candidate, text: str) -> float:
    """How much more common the candidate's words are than the words they replace, one for one,
    in nats of the word list's counts (quand → quant: −4.1). 0 for any other edit: a word unknown
    to the list has no count, an elided word (qu'elle, l'arbre) has none of its own, and an edit
    that adds or drops words is no swap of one word for another."""
    counts = word_frequencies()
    old, new = text[candidate.start:candidate.end], candidate.replacement
    old_words, new_words = PLAIN_WORD.findall(old.lower()), PLAIN_WORD.findall(new.lower())
    if (len(old_words) != len(new_words) or any(a in old + new for a in "'’")
            or not all(w in counts for w in old_words + new_words)):
        return 0.0
    return sum(math.log(counts[w]) for w in new_words) - sum(math.log(counts[w]) for w in old_words)


def one_typo_away(word: str) -> set[str]:
    """Every string one slip away: a letter dropped, added, changed, or two neighbours swapped."""
    letters = "abcdefghijklmnopqrstuvwxyzàâçéèêëîïôûùüœ-'"
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    return ({a + b[1:] for a, b in splits if b}
            | {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
            | {a + c + b[1:] for a, b in splits if b for c in letters}
            | {a + c + b for a, b in splits for c in letters})


def is_known(word: str) -> bool:
    lexicon = french_lexicon()
    return word.lower() in lexicon or word in lexicon


def lexicon_neighbours(word: str) -> list[str]:
    """Known words one typo away from an unknown `word`, the most frequent first."""
    counts = word_frequencies()
    lower = word.lower()
    near = [w for w in one_typo_away(lower) if w in counts and w != lower]
    return [match_case(word, w) for w in sorted(near, key=lambda w: (-counts[w], w))[:MAX_PER_SPAN]]


def accent_variants(word: str) -> list[str]:
    """Known words that differ from `word` only by accents (at most two letters changed)."""
    lower = word.lower()
    bare = "".join(c for c in unicodedata.normalize("NFD", lower) if not unicodedata.combining(c))
    if len(bare) != len(lower):
        return []
    slots = [i for i, c in enumerate(bare) if c in ACCENTED]
    options = set()
    for i in slots:
        for a in bare[i] + ACCENTED[bare[i]]:
            one = bare[:i] + a + bare[i + 1:]
            options.add(one)
            for j in slots:
                if j > i:
                    options |= {one[:j] + b + one[j + 1:] for b in ACCENTED[bare[j]]}
    lexicon = french_lexicon()
    return [match_case(word, w) for w in sorted(options) if w != lower and w in lexicon]


# ---------------------------------------------------------------------------- the sources


def word_candidates(text: str) -> list[Candidate]:
    """Lexicon, accent, homophone and agreement candidates, word by word."""
    lexicon = french_lexicon()
    found = []
    for m in ELIDED.finditer(text):  # c'est → ces, s'en → sans
        elided = m.group().replace("’", "'").lower()
        found += [Candidate(m.start(), m.end(), match_case(m.group(), w), "homophone")
                  for w in HOMOPHONE_OF.get(elided, ()) if w != elided]
    for m in PLAIN_WORD.finditer(text):
        word, start, end = m.group(), m.start(), m.end()
        if start and text[start - 1] in "'’" and word.lower() in ELIDED_FORMS:
            continue  # the "est" of "c'est" is weighed with its "c'"
        lower = word.lower()
        elided = text[end:end + 1] in ("'", "’")  # the l of l'eau is no word of its own
        name = word[:1].isupper() and start > 0  # a capital mid-sentence is a name
        if len(word) > 1 and not (elided or name or is_known(word)):
            found += [Candidate(start, end, w, "lexicon") for w in lexicon_neighbours(word)]
        found += [Candidate(start, end, w, "accent") for w in accent_variants(word)]
        sounds = [w for w in HOMOPHONE_OF.get(lower, ()) if w != lower]
        if is_known(word) and len(lower) >= 3:
            sounds += table_homophones(lower)
        found += [Candidate(start, end, match_case(word, w), "homophone")
                  for w in list(dict.fromkeys(sounds))[:MAX_PER_SPAN]]
        if len(word) >= 4 and lower not in INVARIABLE:
            forms = dict.fromkeys([*agreement_variants(lower, lexicon), *verb_ending_variants(lower, lexicon)])
            found += [Candidate(start, end, match_case(word, w), "variant") for w in forms]
    return found


def elision_candidates(text: str) -> list[Candidate]:
    """An article or pronoun left whole before a vowel: le arbre → l'arbre."""
    return [Candidate(m.start(), m.end(), match_case(m.group(1), ELIDABLE[m.group(1).lower()]), "elision")
            for m in ELISION.finditer(text)]


def compound_candidates(text: str) -> list[Candidate]:
    """Two or three words the word list knows as one, hyphenated (après demain → après-demain,
    c'est à dire → c'est-à-dire) or, for two, closed up (long temps → longtemps); and an unknown
    word cut in two known ones (avecune → avec une)."""
    lexicon = french_lexicon()
    words = list(WORD.finditer(text))
    found = []
    for i in range(len(words)):
        for j in (i + 1, i + 2):
            run = words[i:j + 1]
            if len(run) < j - i + 1 or any(text[a.end():b.start()] != " " for a, b in itertools.pairwise(run)):
                continue
            parts = [m.group() for m in run]
            joins = ["-".join(parts)] + (["".join(parts)] if len(parts) == 2 else [])
            found += [Candidate(run[0].start(), run[-1].end(), match_case(parts[0], w), "compound")
                      for w in joins if w.lower() in lexicon]
    counts = word_frequencies()
    for m in PLAIN_WORD.finditer(text):
        word, start, end = m.group(), m.start(), m.end()
        elided = text[end:end + 1] in ("'", "’") or (start and text[start - 1] in "'’")  # quelqu'un
        if len(word) < 5 or elided or is_known(word) or (word[:1].isupper() and start > 0):
            continue
        lower = word.lower()
        cuts = [(lower[:k], lower[k:]) for k in range(1, len(lower))
                if (k > 1 or lower[0] in "aày") and lower[:k] in counts and lower[k:] in counts and len(lower) - k > 1]
        cuts.sort(key=lambda cut: -min(counts[cut[0]], counts[cut[1]]))
        found += [Candidate(start, end, match_case(word, f"{a} {b}"), "compound") for a, b in cuts[:MAX_SPLITS]]
    return found


def model_candidates(source: str, answer: str) -> list[Candidate]:
    """The model's answer as candidates: one per changed stretch of `edit_pieces`."""
    found, offset = [], 0
    for piece in edit_pieces(source, answer):
        if piece[0] == "equal":
            offset += len(piece[1])
        else:
            _, removed, inserted = piece
            found.append(Candidate(offset, offset + len(removed), inserted, "model"))
            offset += len(removed)
    return found


def candidates(text: str, answer: str | None = None, sources: tuple[str, ...] = SOURCES,
               one_per_edit: bool = True) -> list[Candidate]:
    """Every candidate edit for `text` from the chosen sources, each (span, replacement) once
    (the first source to propose it names it) or, without `one_per_edit`, once per source that
    proposes it (so that a weighing of every source can be narrowed to any of them, `Weighing.
    narrowed`); `answer` is the model's own, when it has one."""
    found = []
    if {"grammar", "speller"} & set(sources):
        found += grammalecte_candidates(text)
    found += word_candidates(text) + elision_candidates(text) + compound_candidates(text)
    if answer is not None:
        found += model_candidates(text, answer)
    found = [c for c in found if c.source in sources and text[c.start:c.end] != c.replacement]
    if one_per_edit:
        return one_per_edit_of(found)
    return sorted(dict.fromkeys(found), key=in_text_order)


def in_text_order(c: Candidate) -> tuple[int, int, int]:
    return c.start, c.end, SOURCES.index(c.source)


def one_per_edit_of(found: list[Candidate]) -> list[Candidate]:
    """Each (span, replacement) once, named by the first of `SOURCES` that proposes it, in text
    order: what the live chooser weighs, and what a weighing of every source narrows to."""
    kept: dict[tuple[int, int, str], Candidate] = {}
    for c in sorted(found, key=in_text_order):
        kept.setdefault((c.start, c.end, c.replacement), c)
    return list(kept.values())
