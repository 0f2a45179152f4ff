"""What every model is compared with: returning the input unchanged, and Grammalecte.

Grammalecte (the French open-source grammar checker) ships as Debian's `python3-grammalecte`,
installed into the system Python's dist-packages. A virtual environment imports that one package
from its folder (its imports are all relative), without putting the system's dist-packages on
`sys.path`, so nothing else of the system Python leaks in.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

SYSTEM_PACKAGES = [Path("/usr/lib/python3/dist-packages"), Path("/usr/share/grammalecte")]

# Typographic rules that would "correct" the project's conventions rather than spelling or
# grammar: straight apostrophe (apos), plain spaces before ? ! : ; (nbsp) and units (unit),
# spacing (esp) and superscript ordinals (typo).
TYPOGRAPHIC_OPTIONS = ("apos", "nbsp", "unit", "esp", "typo")


def copy_baseline(entries: list[dict]) -> list[dict]:
    """The do-nothing corrector: each entry answered with its own input."""
    return [{**e, "model_response": e["input"]} for e in entries]


def import_grammalecte():
    """The `grammalecte` package: importable as it is (pip), or Debian's, loaded from its folder."""
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
