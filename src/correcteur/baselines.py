"""What every model is compared with: returning the input unchanged, and Grammalecte's first
suggestion for each error it flags (its checker is loaded in `candidates.py`)."""

from __future__ import annotations

from correcteur.candidates import grammalecte_errors, speller_suggestions


def copy_baseline(entries: list[dict]) -> list[dict]:
    """The do-nothing corrector: each entry answered with its own input."""
    return [{**e, "model_response": e["input"]} for e in entries]


def grammalecte_correct(text: str, grammar_only: bool = False) -> str:
    """Apply Grammalecte's first suggestion for every flagged span (only its grammar rules' with
    `grammar_only`, the speller left out), right to left so that offsets stay valid; overlapping
    spans keep the leftmost-starting one. Suggestions follow the project's straight-apostrophe
    convention."""
    edits = []
    errors = [e for e in grammalecte_errors(text) if not (grammar_only and e.get("sType") == "WORD")]
    for error in sorted(errors, key=lambda e: (e["nStart"], e["nEnd"])):
        suggestions = error.get("aSuggestions")
        if not suggestions and error.get("sType") == "WORD":
            suggestions = speller_suggestions(text[error["nStart"]:error["nEnd"]])
        if suggestions and (not edits or error["nStart"] >= edits[-1][1]):
            edits.append((error["nStart"], error["nEnd"], suggestions[0].replace("’", "'")))
    for start, end, replacement in reversed(edits):
        text = text[:start] + replacement + text[end:]
    return text
