"""What every model is compared with: returning the input unchanged, and Grammalecte.

Grammalecte (the French open-source grammar checker) ships as Debian's `python3-grammalecte`,
installed into the system Python's dist-packages. A virtual environment reaches it through a
temporary folder on `sys.path` that links to that one package, so nothing else of the system
Python leaks in.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

SYSTEM_PACKAGES = [Path("/usr/lib/python3/dist-packages"), Path("/usr/share/grammalecte")]

# Typographic rules that would "correct" the project's conventions rather than spelling or
# grammar: straight apostrophe (apos), plain spaces before ? ! : ; (nbsp) and units (unit),
# spacing (esp) and superscript ordinals (typo).
TYPOGRAPHIC_OPTIONS = ("apos", "nbsp", "unit", "esp", "typo")


def copy_baseline(entries: list[dict], prefix: str = "") -> list[dict]:
    """The do-nothing corrector: each entry answered with its own input."""
    return [{**e, "model_response": e["input"].removeprefix(prefix)} for e in entries]


@functools.cache
def grammalecte_checker():
    """A Grammalecte checker with typographic rules off, or None when it isn't installed."""
    try:
        import grammalecte
    except ImportError:
        for folder in SYSTEM_PACKAGES:
            if (folder / "grammalecte").is_dir():
                link_dir = Path(tempfile.mkdtemp(prefix="correcteur-grammalecte-"))
                (link_dir / "grammalecte").symlink_to(folder / "grammalecte")
                sys.path.append(str(link_dir))
                break
        try:
            import grammalecte
        except ImportError:
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


def grammalecte_correct(text: str) -> str:
    """Apply Grammalecte's first suggestion for every flagged span, right to left so that
    offsets stay valid; overlapping spans keep the leftmost-starting one. Suggestions follow
    the project's straight-apostrophe convention."""
    speller = required_checker().getSpellChecker()
    edits = []
    for error in sorted(grammalecte_errors(text), key=lambda e: (e["nStart"], e["nEnd"])):
        suggestions = error.get("aSuggestions")
        if not suggestions and error.get("sType") == "WORD":
            suggestions = [s for group in speller.suggest(text[error["nStart"]:error["nEnd"]]) for s in group]
        if suggestions and (not edits or error["nStart"] >= edits[-1][1]):
            edits.append((error["nStart"], error["nEnd"], suggestions[0].replace("’", "'")))
    for start, end, replacement in reversed(edits):
        text = text[:start] + replacement + text[end:]
    return text
