"""The embedded corpus (src/correcteur/corpus/*.txt) is large enough, clean and in the house style."""

import pytest

from correcteur.candidates import grammalecte_checker, grammalecte_errors
from correcteur.data import CORPUS_DIR, normalize_text

MIN_SENTENCES = 2000          # the floor for the embedded corpus
MIN_WORDS, MAX_WORDS = 4, 30
MAX_FLAGGED_SHARE = 0.01      # Grammalecte may flag at most 1% of the sentences


def corpus_lines() -> list[tuple[str, str]]:
    """(file:line, sentence) for every line of the corpus."""
    return [(f"{path.name}:{number}", line)
            for path in sorted(CORPUS_DIR.glob("*.txt"))
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)]


def test_corpus_has_enough_sentences():
    assert len(corpus_lines()) >= MIN_SENTENCES


def test_corpus_lines_are_normalised_and_unique():
    seen: dict[str, str] = {}
    for where, line in corpus_lines():
        assert line == normalize_text(line), f"{where}: not normalised (apostrophe, spaces, NFC): {line!r}"
        assert line.lower() not in seen, f"{where}: duplicate of {seen[line.lower()]}: {line!r}"
        seen[line.lower()] = where


def test_corpus_sentence_lengths():
    bad = [(where, line) for where, line in corpus_lines()
           if not MIN_WORDS <= len(line.split()) <= MAX_WORDS]
    assert not bad, f"{len(bad)} lines outside {MIN_WORDS}-{MAX_WORDS} words, e.g. {bad[:5]}"


@pytest.mark.slow
def test_grammalecte_flags_at_most_one_percent():
    """Grammalecte with only its typographic options off (`candidates.TYPOGRAPHIC_OPTIONS`:
    straight apostrophe, plain spaces before ? ! : ; and units, superscript ordinals)."""
    if grammalecte_checker() is None:
        pytest.skip("Grammalecte is not installed (Debian package python3-grammalecte)")
    lines = corpus_lines()
    flagged = [(where, line, [e.get("sMessage") or e.get("sValue") for e in errors])
               for where, line in lines if (errors := grammalecte_errors(line))]
    assert len(flagged) <= MAX_FLAGGED_SHARE * len(lines), f"{len(flagged)} flagged: {flagged[:10]}"
