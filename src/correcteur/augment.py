"""Seeded, realistic French error operations that turn a clean sentence into training inputs.

Two families of errors:
- the seed project's typographic slips (insertion, deletion, AZERTY-neighbour keys,
  swapped letters, words glued together or split), and
- the mistakes French writers actually make: accents, homophones, agreement, the
  -er/-é/-ez/-ait confusion and a few tense/mood errors that a simple rule can produce.

Every operation is a function `op(text, rng, lexicon) -> str | None` that changes one spot of
the text, or returns None when the text offers no place for it. A lexicon (a set of French
word forms, pyspellchecker's list by default) keeps the lexical errors plausible: an
agreement or verb-ending error must produce a word that exists, as real mistakes do.
Randomness comes only from the `random.Random` passed in, so a seed fixes every output.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

Lexicon = frozenset[str]
Operation = Callable[[str, random.Random, Lexicon], "str | None"]

WORD = re.compile(r"[^\W\d_]+")
LETTER = re.compile(r"[^\W\d_]")

# ---------------------------------------------------------------------------- lexicon


@lru_cache(maxsize=1)
def french_lexicon(min_count: int = 20) -> Lexicon:
    """pyspellchecker's French word forms (pinned: pyspellchecker==0.9.1), minus the rarest
    entries, which are mostly misspellings scraped from the web."""
    from spellchecker import SpellChecker

    frequencies = SpellChecker(language="fr").word_frequency.dictionary
    return frozenset(word for word, count in frequencies.items() if count >= min_count)


def match_case(original: str, replacement: str) -> str:
    """Give `replacement` the capitalisation of `original` (Où → À, ET → EST)."""
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def pick(matches: list[re.Match], rng: random.Random) -> re.Match | None:
    return rng.choice(matches) if matches else None


def splice(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


# ---------------------------------------------------------------------------- typographic slips

AZERTY_ROWS = ("azertyuiop", "qsdfghjklm", "wxcvbn")


def keyboard_neighbours() -> dict[str, str]:
    """Keys around each letter on a French AZERTY keyboard (rows are staggered: the key
    below-left and above-right of a key touch it)."""
    neighbours: dict[str, str] = {}
    for r, row in enumerate(AZERTY_ROWS):
        for c, key in enumerate(row):
            spots = [(r, c - 1), (r, c + 1), (r - 1, c), (r - 1, c + 1), (r + 1, c), (r + 1, c - 1)]
            neighbours[key] = "".join(AZERTY_ROWS[i][j] for i, j in spots
                                      if 0 <= i < len(AZERTY_ROWS) and 0 <= j < len(AZERTY_ROWS[i]))
    return neighbours


NEIGHBOURS = keyboard_neighbours()


def typed_letters(text: str) -> list[re.Match]:
    """Letters that have AZERTY neighbours, inside words of at least three letters."""
    return [m for w in WORD.finditer(text) if len(w.group()) >= 3
            for m in LETTER.finditer(text, w.start(), w.end()) if m.group().lower() in NEIGHBOURS]


def insertion(text: str, rng: random.Random, lexicon: Lexicon) -> str | None:
    """A neighbouring key pressed along with the right one: maison → maisoln."""
    m = pick(typed_letters(text), rng)
    if m is None:
        return None
    extra = rng.choice(NEIGHBOURS[m.group().lower()] + m.group().lower())
    at = m.end() if rng.random() < 0.5 else m.start()
    return splice(text, at, at, extra)


def deletion(text: str, rng: random.Random, lexicon: Lexicon) -> str | None:
    """A letter missed: bonjour → bonjor."""
    m = pick([m for w in WORD.finditer(text) if len(w.group()) >= 3
              for m in LETTER.finditer(text, w.start(), w.end())], rng)
    return None if m is None else splice(text, m.start(), m.end(), "")


def substitution(text: str, rng: random.Random, lexicon: Lexicon) -> str | None:
    """The key next to the right one: demain → demaon."""
    m = pick(typed_letters(text), rng)
    if m is None:
        return None
    return splice(text, m.start(), m.end(), match_case(m.group(), rng.choice(NEIGHBOURS[m.group().lower()])))


def transposition(text: str, rng: random.Random, lexicon: Lexicon) -> str | None:
    """Two neighbouring letters typed in the wrong order: quelle → qeulle."""
    spots = [i for w in WORD.finditer(text) if len(w.group()) >= 3
             for i in range(w.start(), w.end() - 1) if text[i].lower() != text[i + 1].lower()]
    if not spots:
        return None
    i = rng.choice(spots)
    return splice(text, i, i + 2, text[i + 1] + text[i])


def concatenation(text: str, rng: random.Random, lexicon: Lexicon) -> str | None:
    """A missed space bar: à demain → àdemain."""
    m = pick(list(re.finditer(r"(?<=[^\W\d_]) (?=[^\W\d_])", text)), rng)
    return None if m is None else splice(text, m.start(), m.end(), "")


def split(text: str, rng: random.Random, lexicon: Lexicon) -> str | None:
    """A space typed inside a word: rendez → ren dez."""
    w = pick([w for w in WORD.finditer(text) if len(w.group()) >= 6], rng)
    if w is None:
        return None
    at = w.start() + rng.randint(2, len(w.group()) - 2)
    return splice(text, at, at, " ")


# ---------------------------------------------------------------------------- French errors

ACCENT_SWAPS = {
    "é": "eeeèê", "è": "eeé", "ê": "eeé", "ë": "e", "à": "a", "â": "a", "ç": "c",
    "ù": "u", "û": "u", "î": "i", "ï": "i", "ô": "o",
}


def accent(text: str, rng: random.Random, lexicon: Lexicon) -> str | None:
    """A missing or wrong accent (mostly missing, as on a phone or a foreign keyboard):
    été → ete, très → trés. Only accented letters change."""
    m = pick([m for m in re.finditer("[" + "".join(ACCENT_SWAPS) + "]", text, re.IGNORECASE)], rng)
    if m is None:
        return None
    return splice(text, m.start(), m.end(), match_case(m.group(), rng.choice(ACCENT_SWAPS[m.group().lower()])))


HOMOPHONES = (
    ("a", "à"), ("et", "est"), ("ou", "où"), ("ces", "ses", "c'est", "s'est"), ("son", "sont"),
    ("on", "ont"), ("ce", "se"), ("leur", "leurs"), ("peu", "peut", "peux"),
    ("mais", "mes", "met"), ("la", "là"), ("quand", "quant", "qu'en"), ("sa", "ça"),
    ("sur", "sûr"), ("ni", "n'y"), ("si", "s'y"), ("dans", "d'en"), ("tout", "tous"),
    ("quel", "quelle", "quelles", "qu'elle"), ("près", "prêt"), ("sans", "s'en"),
    ("davantage", "d'avantage"), ("voir", "voire"), ("vers", "verre", "vert"),
)
HOMOPHONE_OF = {word: group for group in HOMOPHONES for word in group}
HOMOPHONE_PATTERN = re.compile(
    r"(?<![\w'])(" + "|".join(sorted(map(re.escape, HOMOPHONE_OF), key=len, reverse=True)) + r")(?![\w'])",
    re.IGNORECASE)


def homophone(text: str, rng: random.Random, lexicon: Lexicon) -> str | None:
    """A word replaced by one that sounds the same: il est → il et, c'est → ses."""
    m = pick(list(HOMOPHONE_PATTERN.finditer(text)), rng)
    if m is None:
        return None
    word = m.group().lower()
    other = rng.choice([w for w in HOMOPHONE_OF[word] if w != word])
    return splice(text, m.start(), m.end(), match_case(m.group(), other))


# Words whose last letters look like agreement but are not (mais → mai, dans → dan).
INVARIABLE = frozenset({
    "pas", "mais", "dans", "sous", "sans", "très", "plus", "moins", "alors", "après", "depuis",
    "toujours", "jamais", "vers", "chez", "puis", "donc", "avec", "avant", "pendant", "comme",
    "encore", "aussi", "assez", "ensuite", "parfois", "souvent", "tard", "tôt", "bientôt",
    "tant", "trop", "ans", "fois", "mois", "temps", "prix", "bras", "corps", "avis", "cours",
    "fils", "gens", "jours", "dès", "lors", "tous", "tout", "toute", "toutes", "une", "elle",
    "elles", "cette", "notre", "votre", "leur", "leurs", "même", "mêmes", "autre", "autres",
    "quelque", "quelques", "chaque", "nous", "vous", "ils", "eux", "ceux", "celle", "celles",
    "est", "sont", "faire", "être", "avoir", "entre", "contre", "presque", "quatre",
})


def agreement_variants(word: str, lexicon: Lexicon) -> list[str]:
    """Forms one letter of agreement away: a plural or feminine mark dropped or added,
    or a verb's -ent lost (ils mangent → ils mange)."""
    forms = {word + "s", word + "e"}
    if word.endswith(("s", "x", "e")):
        forms.add(word[:-1])
    if word.endswith("x"):
        forms.add(word[:-1] + "s")
    if word.endswith("es"):
        forms.add(word[:-2])
    if word.endswith("ent"):
        forms.add(word[:-2])
    return sorted(form for form in forms if form != word and form in lexicon)


def agreement(text: str, rng: random.Random, lexicon: Lexicon) -> str | None:
    """Dropped or added plural/feminine agreement: les enfants → les enfant, elle est partie
    → elle est parti. The new form must be a real word, as in the mistakes people make."""
    spots = [(w, forms) for w in WORD.finditer(text)
             if len(w.group()) >= 4 and w.group().lower() not in INVARIABLE
             for forms in [agreement_variants(w.group().lower(), lexicon)] if forms]
    if not spots:
        return None
    w, forms = rng.choice(spots)
    return splice(text, w.start(), w.end(), match_case(w.group(), rng.choice(forms)))


VERB_ENDING = re.compile(r"(er|é|ée|és|ées|ez|ais|ait|aient)$")
VERB_ENDINGS = ("er", "é", "ée", "és", "ées", "ez", "ais", "ait")


def verb_ending_variants(word: str, lexicon: Lexicon) -> list[str]:
    """The other forms of a first-group verb that sound alike: manger, mangé, mangez,
    mangeait… (mange+ait keeps its e, mang+er drops it)."""
    m = VERB_ENDING.search(word)
    if m is None or m.start() < 3:  # short stems are other verbs: fait → fez, été → éter
        return []
    stem = word[:m.start()]
    if stem.endswith("ge") and m.group().startswith("a"):
        stem = stem[:-1]
    forms = {stem + ("e" if stem.endswith("g") and ending.startswith("a") else "") + ending
             for ending in VERB_ENDINGS}
    return sorted(form for form in forms if form != word and form in lexicon)


def verb_ending(text: str, rng: random.Random, lexicon: Lexicon) -> str | None:
    """The -er/-é/-ez/-ait confusion: j'ai mangé → j'ai manger, il faut venir → il faut venez."""
    spots = [(w, forms) for w in WORD.finditer(text) if len(w.group()) >= 4
             for forms in [verb_ending_variants(w.group().lower(), lexicon)] if forms]
    if not spots:
        return None
    w, forms = rng.choice(spots)
    return splice(text, w.start(), w.end(), match_case(w.group(), rng.choice(forms)))


PERSONS = {"je": 0, "j'": 0, "tu": 1, "il": 2, "elle": 2, "on": 2,
           "nous": 3, "vous": 4, "ils": 5, "elles": 5}
# verb: present subjunctive (6 persons) / present indicative (6 persons)
SUBJUNCTIVES = {
    "être": ("sois sois soit soyons soyez soient", "suis es est sommes êtes sont"),
    "avoir": ("aie aies ait ayons ayez aient", "ai as a avons avez ont"),
    "faire": ("fasse fasses fasse fassions fassiez fassent", "fais fais fait faisons faites font"),
    "aller": ("aille ailles aille allions alliez aillent", "vais vas va allons allez vont"),
    "pouvoir": ("puisse puisses puisse puissions puissiez puissent",
                "peux peux peut pouvons pouvez peuvent"),
    "savoir": ("sache saches sache sachions sachiez sachent", "sais sais sait savons savez savent"),
    "venir": ("vienne viennes vienne venions veniez viennent",
              "viens viens vient venons venez viennent"),
    "prendre": ("prenne prennes prenne prenions preniez prennent",
                "prends prends prend prenons prenez prennent"),
    "devoir": ("doive doives doive devions deviez doivent", "dois dois doit devons devez doivent"),
    "vouloir": ("veuille veuilles veuille voulions vouliez veuillent",
                "veux veux veut voulons voulez veulent"),
    "dire": ("dise dises dise disions disiez disent", "dis dis dit disons dites disent"),
    "mettre": ("mette mettes mette mettions mettiez mettent", "mets mets met mettons mettez mettent"),
    "finir": ("finisse finisses finisse finissions finissiez finissent",
              "finis finis finit finissons finissez finissent"),
    "partir": ("parte partes parte partions partiez partent", "pars pars part partons partez partent"),
    "voir": ("voie voies voie voyions voyiez voient", "vois vois voit voyons voyez voient"),
}
INDICATIVE_FOR = {(person, subj): ind
                  for subj_forms, ind_forms in SUBJUNCTIVES.values()
                  for person, (subj, ind) in enumerate(zip(subj_forms.split(), ind_forms.split(), strict=True))
                  if subj != ind}
# imperfect stem → conditional stem, for the verbs whose conditional is irregular
IRREGULAR_CONDITIONAL = {"av": "aur", "ét": "ser", "pouv": "pourr", "voul": "voudr", "all": "ir",
                         "fais": "fer", "sav": "saur", "dev": "devr", "ven": "viendr", "ten": "tiendr"}
IMPERFECT = re.compile(r"(ais|ait|ions|iez|aient)$")
PRONOUN = r"(j'|(?:je|tu|il|elle|on|nous|vous|ils|elles) )"
AFTER_QUE = re.compile(r"(?<![\w'])(?:que |qu')" + PRONOUN + r"([^\W\d_]+)", re.IGNORECASE)
AFTER_SI = re.compile(r"(?<![\w'])(?:si |s')" + PRONOUN + r"([^\W\d_]+)", re.IGNORECASE)
AFTER_JE = re.compile(r"(?<![\w'])(?:je |j')([^\W\d_]+)", re.IGNORECASE)


def person_of(pronoun: str) -> int:
    return PERSONS[pronoun.strip().lower()]


def indicative_after_que(verb: str, person: int, lexicon: Lexicon) -> str | None:
    """il faut que tu viennes → il faut que tu viens; que nous parlions → que nous parlons."""
    if (person, verb) in INDICATIVE_FOR:
        return INDICATIVE_FOR[person, verb]
    if person in (3, 4) and verb.endswith(("ions", "iez")):
        form = verb[:-4] + ("ons" if person == 3 else "ez")
        return form if form in lexicon else None
    return None


def conditional_after_si(verb: str, lexicon: Lexicon) -> str | None:
    """si j'avais → si j'aurais, si tu mangeais → si tu mangerais (conditional after "si")."""
    m = IMPERFECT.search(verb)
    if m is None:
        return None
    stem, ending = verb[:m.start()], m.group()
    stem = IRREGULAR_CONDITIONAL.get(stem, stem + ("r" if stem.endswith("e") else "er"))
    form = stem + ending
    return form if form in lexicon else None


def future_conditional_swap(verb: str, lexicon: Lexicon) -> str | None:
    """je viendrai ↔ je viendrais: the two sound alike in the first person."""
    if verb.endswith("rai"):
        form = verb + "s"
    elif verb.endswith("rais"):
        form = verb[:-1]
    else:
        return None
    return form if form in lexicon else None


def tense(text: str, rng: random.Random, lexicon: Lexicon) -> str | None:
    """A wrong tense or mood where a rule says which: indicative instead of subjunctive after
    "que", conditional after "si", future and conditional swapped after "je"."""
    spots = []
    for m in AFTER_QUE.finditer(text):
        spots.append((m.start(2), m.end(2), indicative_after_que(m.group(2).lower(), person_of(m.group(1)), lexicon)))
    for m in AFTER_SI.finditer(text):
        spots.append((m.start(2), m.end(2), conditional_after_si(m.group(2).lower(), lexicon)))
    for m in AFTER_JE.finditer(text):
        spots.append((m.start(1), m.end(1), future_conditional_swap(m.group(1).lower(), lexicon)))
    spots = [spot for spot in spots if spot[2] is not None]
    if not spots:
        return None
    start, end, form = rng.choice(spots)
    return splice(text, start, end, match_case(text[start:end], form))


OPERATIONS: dict[str, Operation] = {
    "insertion": insertion, "deletion": deletion, "substitution": substitution,
    "transposition": transposition, "concatenation": concatenation, "split": split,
    "accent": accent, "homophone": homophone, "agreement": agreement,
    "verb_ending": verb_ending, "tense": tense,
}

# French mistakes weigh more than keyboard slips: they are what a corrector is for.
DEFAULT_WEIGHTS = {
    "insertion": 1.0, "deletion": 1.0, "substitution": 1.0, "transposition": 1.0,
    "concatenation": 0.5, "split": 0.5,
    "accent": 3.0, "homophone": 3.0, "agreement": 2.0, "verb_ending": 2.0, "tense": 1.0,
}


# ---------------------------------------------------------------------------- sentences


@dataclass
class AugmentConfig:
    """How many corrupted inputs to make from each clean sentence, and how."""
    variants: int = 4          # corrupted inputs per sentence (fewer if the sentence offers fewer)
    min_errors: int = 1        # operations per corrupted input, drawn uniformly in [min, max]
    max_errors: int = 3
    clean_share: float = 0.15  # expected share of pairs with input == output
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(OPERATIONS)
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}; known: {sorted(OPERATIONS)}")
        if not 0 <= self.clean_share < 1:
            raise ValueError("clean_share must be in [0, 1)")
        if not 1 <= self.min_errors <= self.max_errors:
            raise ValueError("need 1 <= min_errors <= max_errors")


def corrupt(text: str, n_errors: int, rng: random.Random, lexicon: Lexicon,
            weights: dict[str, float] | None = None) -> tuple[str, list[str]]:
    """Apply `n_errors` operations drawn by weight; returns the text and the names of the
    operations that applied, in order. Operations the text has no place for are redrawn."""
    weights = DEFAULT_WEIGHTS if weights is None else weights
    names = [name for name, w in weights.items() if w > 0]
    cum_weights = [sum(weights[n] for n in names[:i + 1]) for i in range(len(names))]
    applied: list[str] = []
    for _ in range(4 * n_errors):
        if len(applied) == n_errors:
            break
        name = rng.choices(names, cum_weights=cum_weights)[0]
        result = OPERATIONS[name](text, rng, lexicon)
        if result is not None and result != text:
            text = result
            applied.append(name)
    return text, applied


def augment_sentence(text: str, config: AugmentConfig, rng: random.Random, lexicon: Lexicon,
                     n_given: int = 0) -> list[tuple[str, list[str]]]:
    """(input, error_types) pairs for one clean sentence: up to `config.variants` distinct
    corrupted inputs, plus the clean pair (input == output, no error) drawn so that clean pairs
    make up `config.clean_share` of all pairs on average, counting the `n_given` erroneous
    inputs the source already has for this sentence."""
    seen = {text}
    pairs: list[tuple[str, list[str]]] = []
    for _ in range(3 * config.variants):
        if len(pairs) == config.variants:
            break
        corrupted, ops = corrupt(text, rng.randint(config.min_errors, config.max_errors), rng,
                                 lexicon, config.weights)
        if corrupted not in seen:
            seen.add(corrupted)
            pairs.append((corrupted, ops))
    p_clean = config.clean_share * max(len(pairs) + n_given, 1) / (1 - config.clean_share)
    if rng.random() < p_clean:
        pairs.insert(0, (text, []))
    return pairs
