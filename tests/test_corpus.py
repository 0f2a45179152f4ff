"""The embedded corpus (data/corpus/*.txt) is large enough, clean and in the house style."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

from correcteur.data import CORPUS_DIR, normalize_text

MIN_SENTENCES = 2000          # the floor for the embedded corpus
MIN_WORDS, MAX_WORDS = 4, 30
MAX_FLAGGED_SHARE = 0.01      # Grammalecte may flag at most 1% of the sentences
GRAMMALECTE_DIR = Path("/usr/lib/python3/dist-packages/grammalecte")
# Typographic conventions the corpus chooses differently from Grammalecte's defaults:
# a straight apostrophe, and ordinary spaces before ? ! : ; and between a number and its unit.
TYPOGRAPHIC_OPTIONS_OFF = {"apos": False, "nbsp": False, "unit": False}


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


@pytest.fixture(scope="module")
def grammalecte():
    """Debian's Grammalecte, reached from the venv through a folder that links to it only
    (putting all of dist-packages on sys.path would shadow the venv's packages)."""
    if not (GRAMMALECTE_DIR / "__init__.py").exists():
        pytest.skip("Grammalecte is not installed (Debian package python3-grammalecte)")
    with tempfile.TemporaryDirectory() as folder:
        os.symlink(GRAMMALECTE_DIR, Path(folder) / "grammalecte")
        sys.path.insert(0, folder)
        try:
            import grammalecte as module

            yield module.GrammarChecker("fr")
        finally:
            sys.path.remove(folder)


@pytest.mark.slow
def test_grammalecte_flags_at_most_one_percent(grammalecte):
    options = {**grammalecte.getGCEngine().getOptions(), **TYPOGRAPHIC_OPTIONS_OFF}
    lines = corpus_lines()
    flagged = []
    for where, line in lines:
        grammar, spelling = grammalecte.getParagraphErrors(line, dOptions=options)
        if list(grammar) or spelling:
            flagged.append((where, line, [e["sMessage"] for e in grammar] + [e["sValue"] for e in spelling]))
    assert len(flagged) <= MAX_FLAGGED_SHARE * len(lines), f"{len(flagged)} flagged: {flagged[:10]}"
